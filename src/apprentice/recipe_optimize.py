"""The ``optimize`` stage of a recipe run: ``ap.BetterTogether`` as the recipe's ``optimize``
section describes it, over the same program, data, teacher and student as the other stages.

    runs/<name>/optimize/
      result.json          the strategy, each step's score on the held-out training
                           examples, its teacher calls and wall time, and the step kept
      step<i>-<kind>.json  each step's program (``start``, ``p``, ``w``), as program.json
      program.json         the program kept: the eval stage scores it on the dev set as
                           "student (BetterTogether)"
      weights/<key>/       the weight steps' BootstrapFinetune run directory (its own
                           run.json, traces, dataset and adapters), one per stage key: an
                           interrupted stage resumes there, a changed one trains beside it

The start program is the recipe's program on the untrained student, prompted as the student
is trained and served. A prompt step optimizes demos or instructions for the program's own
LM (the teacher runs bootstrap the demos; GEPA's proposer is the teacher unless the section
names one); a weight step trains the student on the teacher's runs of the program as the
previous step left it, with the recipe's bootstrap, dataset, lora, train and serve sections.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apprentice.files import atomic_write
from apprentice.pipeline import _hash as stage_hash

if TYPE_CHECKING:
    from apprentice.recipe import Recipe
    from apprentice.run import Run

__all__ = ["optimize_key", "optimize_program", "split_valset"]


def split_valset(examples: list[Any], fraction: float, seed: int = 0) -> tuple[list, list]:
    """(train, val): ``fraction`` of ``examples`` held out at random (at least one, and at
    least one left to train on); ``fraction`` 0 scores on the training examples."""
    if fraction == 0:
        return list(examples), list(examples)
    if len(examples) < 2:
        raise ValueError(
            f"optimize.val_fraction {fraction} needs at least 2 training examples to hold some "
            f"out, got {len(examples)}: add examples or set optimize.val_fraction: 0"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = min(max(1, round(fraction * len(examples))), len(examples) - 1)
    held = set(order[:n_val])
    train = [e for i, e in enumerate(examples) if i not in held]
    val = [e for i, e in enumerate(examples) if i in held]
    return train, val


def optimize_key(run: Run) -> str:
    """What the stage's result depends on: the program, data, metric and teacher (their
    code), the proposer's script, the sections that shape the student, and the student."""
    from apprentice.fingerprint import code_fingerprint
    from apprentice.recipe import import_object
    from apprentice.traces.bootstrap import dataset_hash, program_hash
    from apprentice.train.resume import learning_settings

    r = run.recipe
    prompt = r.optimize.prompt
    proposer = getattr(prompt, "proposer", None)
    proposer_code = (
        code_fingerprint(import_object(proposer.script, "optimize.prompt.proposer.script"))
        if proposer is not None and proposer.script
        else None
    )
    return stage_hash(
        program_hash(r.make_program()),
        dataset_hash(run.job.trainset),
        code_fingerprint(run.job.metric),
        run.job.teacher_key,
        proposer_code,
        r.section_hash("optimize", "student", "bootstrap", "dataset", "lora", "serve"),
        # what the weight steps learn from, not how they run or report (threads, tracking)
        learning_settings(r.train.model_dump(mode="json")),
        r.eval.untrained_max_new_tokens,
        run.student_path(),
        run._tiny_stamp(),
    )


def optimize_program(run: Run, key: str) -> dict[str, Any]:
    """Runs BetterTogether; writes ``optimize/``; returns the stage's summary. ``key``:
    the stage's (``optimize_key``), which names the weight steps' run directory."""
    from apprentice.dataset.build import read_dataset_manifest
    from apprentice.optimize.together import BetterTogether

    r, job = run.recipe, run.job
    config = r.optimize
    out = run.root / "optimize"
    out.mkdir(exist_ok=True)
    student = run.ensure_student(read_dataset_manifest(run.dataset_dir).content_hash)
    teacher = r.make_teacher(cache_dir=run.teacher_cache_dir(), allow_key_hosts=run.allow_key_hosts)
    trainset, valset = split_valset(list(job.trainset), config.val_fraction)
    together = BetterTogether(
        job.metric,
        prompt_optimizer=_prompt_optimizer(run, teacher),
        weight_optimizer=_weight_optimizer(
            r, job.metric, student, out / "weights" / key, run.progress
        ),
        num_threads=config.num_threads,
        display_progress=False,
    )
    kept = together.compile(
        _start_program(run, student),
        trainset=trainset,
        teacher=teacher,
        valset=valset,
        strategy=config.strategy,
    )
    for score, program in zip(together.step_scores, together.programs, strict=True):
        program.save(out / f"step{score.index}-{score.step}.json")
    kept.save(out / "program.json")
    chosen = together.programs.index(kept)
    result = {
        "strategy": config.strategy,
        "prompt_optimizer": config.prompt.name,
        "weight_optimizer": config.weights.name,
        "trainset": len(trainset),
        "valset": len(valset),
        "steps": [asdict(s) for s in together.step_scores],
        "kept": chosen,
    }
    atomic_write(out / "result.json", json.dumps(result, indent=2))
    return result


def _start_program(run: Run, student: str):
    """The recipe's program on the untrained student, loaded as the recipe's ``student``
    section says, in the format its prompted baselines read (the full prompt: a baked one
    would hide the instructions a prompt step writes)."""
    from apprentice.serve.binding import student_lm, template_options

    r = run.recipe
    program = r.make_program()
    options = template_options(r.serve, run.trained_prompt()[1])
    cap = r.eval.untrained_max_new_tokens
    lm = student_lm(r.serve, student, max_new_tokens=cap, loading=run.student_loading(), **options)
    program.set_lm(lm)
    program.set_format(run.prompted_format())
    return program


def _prompt_optimizer(run: Run, teacher: Any):
    from apprentice.optimize.bootstrap import BootstrapFewShot
    from apprentice.optimize.gepa import GEPA
    from apprentice.optimize.random_search import BootstrapFewShotWithRandomSearch

    r = run.recipe
    p = r.optimize.prompt
    metric, threads = run.job.metric, r.optimize.num_threads
    threshold = r.bootstrap.threshold
    if p.name == "bootstrap_fewshot":
        return BootstrapFewShot(
            metric,
            metric_threshold=threshold,
            max_bootstrapped_demos=p.max_bootstrapped_demos,
            max_labeled_demos=p.max_labeled_demos,
            max_rounds=p.max_rounds,
        )
    if p.name == "random_search":
        return BootstrapFewShotWithRandomSearch(
            metric,
            num_candidate_programs=p.num_candidate_programs,
            max_bootstrapped_demos=p.max_bootstrapped_demos,
            max_labeled_demos=p.max_labeled_demos,
            metric_threshold=threshold,
            num_threads=threads,
            seed=p.seed,
        )
    proposer = teacher
    if p.proposer is not None:
        proposer = r.make_teacher(
            cache_dir=run.teacher_cache_dir(),
            allow_key_hosts=run.allow_key_hosts,
            config=p.proposer,
            where="optimize.prompt.proposer",
        )
    return GEPA(
        metric,
        reflection_lm=proposer,
        max_metric_calls=p.max_metric_calls,
        max_full_evals=p.max_full_evals,
        reflection_minibatch_size=p.reflection_minibatch_size,
        examples_per_proposal=p.examples_per_proposal,
        num_threads=threads,
        seed=p.seed,
    )


def _weight_optimizer(r: Recipe, metric: Any, student: str, run_dir: Path, progress: bool):
    """BootstrapFinetune with the recipe's own sections: one place says how to train."""
    from apprentice.optimize.finetune import BootstrapFinetune

    b = r.bootstrap
    return BootstrapFinetune(
        metric=metric,
        student=student,
        multitask=r.dataset.multitask,
        train=r.train,
        lora=r.lora,
        threshold=b.threshold,
        concurrency=b.concurrency,
        attempts=b.attempts,
        val_fraction=r.dataset.val_fraction,
        run_dir=run_dir,
        progress=progress,
        retry_failed=b.retry_failed,
        serve=r.serve,
        format=r.dataset.format,
        chat_template=r.student.chat_template,
        max_cost_usd=b.max_cost_usd,
        loading=r.student.loading(),
    )
