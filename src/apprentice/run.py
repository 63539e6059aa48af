"""The run directory of a recipe: one folder per distillation run, and the stages that fill it.

The stages up to ``bind`` are the shared pipeline (``apprentice/pipeline.py``, also behind
``BootstrapFinetune``); this file adds what only a recipe run has: the recipe file, the
evaluation of every system on the dev set, and the report.

    runs/<name>/
      recipe.yaml        the recipe as run (overrides applied)
      run.json           each stage's input hash, status, time and summary
      traces/            bootstrap: append-only trace store + manifest
      dataset/           dataset: HF datasets on disk + manifest
      student/           a tiny student built from config (offline demos only)
      adapters/<name>/   train: checkpoints, train_log.jsonl, adapter/ (PEFT dir + manifest)
      program.json       bind: the compiled program, bound to the student's backend
      optimize/          optimize (only with an optimize section): BetterTogether's steps,
                         each one's score and program, and the program kept
      eval/<system>.json eval: teacher, untrained student, trained student on the dev set
      report/            report.md + PNG plots

The teacher's replies are cached outside the run, in ``APPRENTICE_CACHE_DIR`` (default
``~/.cache/apprentice``), so a new run directory never pays twice for the same call.

Every stage records the hash of its inputs. Re-running skips a stage whose hash is
unchanged and whose output exists, and resumes an interrupted one: the bootstrap skips
traced examples, training restarts from its newest checkpoint.

One process at a time: opening a run and running a stage take the directory's lock
(``files.exclusive``); a second process is refused at once, naming the lock, instead of
interleaving its writes with the first one's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import yaml

from apprentice.files import atomic_write
from apprentice.pipeline import Job, Pipeline, StageError, StageOutcome
from apprentice.pipeline import _hash as stage_hash
from apprentice.recipe import Recipe, RecipeError, load_recipe

__all__ = ["STAGES", "Run", "StageOutcome", "locate", "recipe_job"]

log = logging.getLogger(__name__)

STAGES = ("bootstrap", "dataset", "train", "bind", "optimize", "eval", "report")
SYSTEMS = {
    "teacher": "teacher",
    "untrained": "student (untrained)",
    "fewshot": "student (untrained, few-shot)",
    "trained": "student (trained)",
    "optimized": "student (BetterTogether)",
}


HINTS = {
    "mismatch": "Pass --reset-traces to move the old traces aside and run the teacher again, "
    "or use a new --run-dir (the teacher's replies are cached in APPRENTICE_CACHE_DIR, default "
    "~/.cache/apprentice, so calls made before cost nothing)",
    "reused": "set bootstrap.retry_failed: true (or --set bootstrap.retry_failed=true) "
    "to run the failed ones again",
    "require": "run 'apprentice {stage} {root}' (or 'apprentice distill') first",
}


def recipe_job(
    recipe: Recipe,
    root: Path,
    allow_key_hosts: tuple[str, ...] = (),
    *,
    reset_traces: bool = False,
) -> Job:
    """The pipeline's job as a recipe describes it; messages name recipe keys.

    Building it imports the recipe's program, metric, teacher script and data factory: the
    recipe's code runs here, as a script's would."""
    from apprentice.fingerprint import code_fingerprint
    from apprentice.recipe import import_object

    t = recipe.teacher
    # The scripted teacher's code, not only its import path: an edit re-runs the stage.
    code = code_fingerprint(import_object(t.script, "teacher.script")) if t.script else None
    return Job(
        make_program=recipe.make_program,
        trainset=recipe.load_split("train"),
        metric=recipe.make_metric(),
        make_teacher=lambda cache: recipe.make_teacher(
            cache_dir=cache, allow_key_hosts=allow_key_hosts
        ),
        student=recipe.student.model or str(root / "student"),
        tiny=recipe.student.tiny,
        chat_template=recipe.student.chat_template,
        loading=recipe.student.loading(),
        bootstrap=recipe.bootstrap,
        dataset=recipe.dataset,
        lora=recipe.lora,
        train=recipe.train,
        serve=recipe.serve,
        teacher_key=stage_hash(recipe.section_hash("teacher"), code),
        reset_traces=reset_traces,
        hints=HINTS,
    )


def locate(
    target: str | os.PathLike,
    overrides: list[str] | None = None,
    run_dir: str | os.PathLike | None = None,
) -> tuple[Recipe, Path]:
    """(the recipe, its run directory) for a recipe YAML or a run directory; nothing is
    written."""
    target = Path(target)
    if target.is_dir():
        recipe_file = target / "recipe.yaml"
        if not recipe_file.exists():
            raise RecipeError(
                f"{target} is a directory without recipe.yaml; give a recipe YAML or a run "
                "directory made by 'apprentice distill'"
            )
        recipe = load_recipe(recipe_file, overrides)
        root = Path(run_dir) if run_dir else target
    else:
        recipe = load_recipe(target, overrides)
        root = Path(run_dir or recipe.run_dir or Path("runs") / recipe.name)
    recipe.check_data_files()
    return recipe, root


class Run(Pipeline):
    """``Run.open("recipes/demo/causal.yaml")`` or ``Run.open("runs/demo-causal")``.

    The job (and so the recipe's code) is built when a stage first needs it: ``report``
    reads the run's stored results only, and never imports the recipe's modules."""

    def __init__(
        self,
        recipe: Recipe,
        root: Path,
        *,
        progress: bool = True,
        allow_key_hosts: tuple[str, ...] = (),
        reset_traces: bool = False,
    ) -> None:
        self.recipe = recipe
        self.allow_key_hosts = tuple(allow_key_hosts)
        self.reset_traces = reset_traces
        self._job: Job | None = None
        super().__init__(root, None, progress=progress)  # type: ignore[arg-type]

    @property
    def job(self) -> Job:
        if self._job is None:
            self._job = recipe_job(
                self.recipe, self.root, self.allow_key_hosts, reset_traces=self.reset_traces
            )
        return self._job

    @job.setter
    def job(self, job: Job | None) -> None:
        self._job = job

    def student_path(self) -> str:
        return self.recipe.student.model or str(self.root / "student")

    # -- opening ----------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        target: str | os.PathLike,
        *,
        overrides: list[str] | None = None,
        run_dir: str | os.PathLike | None = None,
        progress: bool = True,
        allow_key_hosts: tuple[str, ...] = (),
        reset_traces: bool = False,
    ) -> Run:
        """The run of a recipe YAML or of a run directory; ``reset_traces`` moves the trace
        store's traces aside at the next bootstrap, so the teacher runs again."""
        recipe, root = locate(target, overrides, run_dir)
        root.mkdir(parents=True, exist_ok=True)
        run = cls(
            recipe,
            root,
            progress=progress,
            allow_key_hosts=allow_key_hosts,
            reset_traces=reset_traces,
        )
        with run._exclusive():
            run._write_recipe()
        return run

    def _write_recipe(self) -> None:
        data = self.recipe.model_dump(mode="json", exclude_none=False)
        text = "# apprentice distill " + str(self.root / "recipe.yaml") + "\n"
        text += yaml.safe_dump(data, sort_keys=False)
        atomic_write(self.root / "recipe.yaml", text)

    def distill(self) -> list[StageOutcome]:
        with self._exclusive():  # held across the stages, so no one slips in between
            for stage in STAGES:
                if stage == "optimize" and self.recipe.optimize is None:
                    continue
                getattr(self, stage)()
        return self.outcomes

    def optimize(self) -> StageOutcome:
        """BetterTogether over the program, as the recipe's ``optimize`` section says
        (``recipe_optimize.py``), into ``optimize/``."""
        from apprentice.recipe_optimize import optimize_key, optimize_program

        if self.recipe.optimize is None:
            raise RecipeError(
                f"recipe {self.recipe.name!r} has no optimize section: add one, e.g. "
                "optimize: {strategy: 'p -> w -> p', prompt: {name: bootstrap_fewshot}} "
                "(recipes/demo/together.yaml)"
            )
        self.require(self.dataset_dir / "manifest.json", "dataset")
        key = optimize_key(self)
        out = self.root / "optimize"
        exists = (out / "result.json").exists() and (out / "program.json").exists()
        return self._stage("optimize", key, lambda: optimize_program(self, key), exists=exists)

    def optimized_program(self):
        """The program the optimize stage kept, loaded from optimize/program.json."""
        path = self.root / "optimize" / "program.json"
        self.require(path, "optimize")
        # trusted: written by this run, whose program already runs code of its choosing
        return self.recipe.make_program().load(path, trusted=True)

    def bootstrap(self) -> StageOutcome:
        from apprentice.traces.store import TraceStoreMismatch

        try:
            return super().bootstrap()
        except TraceStoreMismatch as exc:  # a recipe's errors are RecipeErrors, one line each
            raise RecipeError(str(exc)) from None

    def hints(self) -> dict[str, str]:
        return HINTS  # the same as the job's, without building the job (and running its code)

    def require(self, path: Path, stage: str) -> None:
        try:
            super().require(path, stage)
        except StageError as exc:  # a recipe's errors are RecipeErrors, one line each
            raise RecipeError(str(exc)) from None

    def _tiny_stamp(self) -> str | None:
        stamp = Path(self.student_path()) / "apprentice_tiny.json"
        return stamp.read_text() if self.recipe.student.tiny and stamp.exists() else None

    def _fewshot(self):
        """The program with ``eval.fewshot`` demos per predictor from the teacher's passing
        runs over the training data (its replies come from the run's cache)."""
        from apprentice.optimize.bootstrap import BootstrapFewShot

        r = self.recipe
        optimizer = BootstrapFewShot(
            r.make_metric(),
            metric_threshold=r.bootstrap.threshold,
            max_bootstrapped_demos=r.eval.fewshot,
            max_labeled_demos=0,
        )
        return optimizer.compile(
            r.make_program(),
            trainset=r.load_split("train"),
            teacher=r.make_teacher(
                cache_dir=self.teacher_cache_dir(), allow_key_hosts=self.allow_key_hosts
            ),
        )

    def eval(self) -> StageOutcome:
        from apprentice.evaluate.report import SystemEval, evaluate_system
        from apprentice.fingerprint import code_fingerprint
        from apprentice.serve.binding import student_lm, template_options
        from apprentice.traces.bootstrap import dataset_hash, program_hash

        r = self.recipe
        if all((d / "adapter" / "manifest.json").exists() for d in self.adapter_dirs().values()):
            # `apprentice eval --set serve.backend=...` scores the student served that way:
            # bind again first (cheap; skipped when the serve settings did not change).
            self.bind()
        self.require(self.program_file, "bind")
        devset = r.load_split("dev")
        metric = r.make_metric()

        # The metric's and program's code, not only their import paths: fixing either
        # re-scores every system. Of the eval section, each system's key holds only what
        # changes its score (the untrained cap, the number of demos): switching a baseline
        # off, or changing num_threads, re-scores nothing, and a retrained student re-scores
        # only itself (scoring the baselines again cost a SmolLM2 ReAct run 19 minutes).
        base = stage_hash(
            dataset_hash(devset),
            r.section_hash("metric", "program"),
            code_fingerprint(metric),
            program_hash(r.make_program()),
        )
        prompted = self.prompted_format()  # may read the student's config: once per eval
        keys = {
            "teacher": stage_hash(base, self.job.teacher_key),
            "untrained": stage_hash(
                base,
                self.student_path(),
                r.section_hash("student", "serve", "dataset"),
                self._tiny_stamp(),
                prompted.name,
                r.eval.untrained_max_new_tokens,
            ),
            "fewshot": stage_hash(
                base,
                self.student_path(),
                r.section_hash("student", "serve", "teacher", "data", "bootstrap", "dataset"),
                self._tiny_stamp(),
                prompted.name,
                r.eval.untrained_max_new_tokens,
                r.eval.fewshot,
            ),
            # The train stage's record changes whenever adapters are retrained in place.
            "trained": stage_hash(
                base, _file_hash(self.program_file), self.state()["stages"].get("train")
            ),
        }
        if r.optimize is not None:
            # The optimize stage's record changes whenever it runs again.
            self.require(self.root / "optimize" / "program.json", "optimize")
            keys["optimized"] = stage_hash(
                base,
                _file_hash(self.root / "optimize" / "program.json"),
                self.state()["stages"].get("optimize"),
            )
        wanted = (
            ["teacher"] * r.eval.teacher
            + ["untrained"] * r.eval.untrained
            + ["fewshot"] * bool(r.eval.fewshot)
            + ["trained"]
            + ["optimized"] * (r.optimize is not None)
        )
        out_dir = self.root / "eval"
        out_dir.mkdir(exist_ok=True)

        def run() -> dict[str, Any]:
            summary = {}
            for system in wanted:
                path = out_dir / f"{system}.json"
                if path.exists():
                    saved = json.loads(path.read_text())
                    if saved.get("key") == keys[system]:
                        summary[system] = SystemEval.from_dict(saved["eval"]).score
                        continue
                if system == "teacher":
                    program = r.make_program()
                    teacher = r.make_teacher(
                        cache_dir=self.teacher_cache_dir(), allow_key_hosts=self.allow_key_hosts
                    )
                    program.set_lm(teacher)
                elif system in ("untrained", "fewshot"):
                    program = r.make_program() if system == "untrained" else self._fewshot()
                    cap = r.eval.untrained_max_new_tokens
                    options = template_options(r.serve, self.trained_prompt()[1])
                    lm = student_lm(
                        r.serve,
                        self.student_path(),
                        max_new_tokens=cap,
                        loading=r.student.loading(),
                        **options,
                    )
                    program.set_lm(lm)
                    program.set_format(prompted)
                elif system == "optimized":
                    program = self.optimized_program()
                else:
                    program = self.compiled_program()
                result = evaluate_system(
                    SYSTEMS[system],
                    program,
                    devset,
                    metric,
                    num_threads=r.eval.num_threads,
                    display_progress=self.progress,
                )
                atomic_write(
                    path,
                    json.dumps({"key": keys[system], "eval": result.to_dict()}, indent=2),
                )
                summary[system] = result.score
            return summary

        key = stage_hash(*[keys[s] for s in wanted])
        exists = all((out_dir / f"{s}.json").exists() for s in wanted)
        return self._stage("eval", key, run, exists=exists)

    def report(self) -> StageOutcome:
        from apprentice.evaluate.report import SystemEval, write_report

        out = self.root / "eval"
        systems = []
        optimizing = self.recipe.optimize is not None  # else optimize/ is an older run's
        for system in SYSTEMS:
            path = out / f"{system}.json"
            if path.exists() and (system != "optimized" or optimizing):
                systems.append(SystemEval.from_dict(json.loads(path.read_text())["eval"]))
        if not systems:
            self.require(out / "trained.json", "eval")
        logs = {
            p.parent.name: p for p in sorted((self.root / "adapters").glob("*/train_log.jsonl"))
        }
        stages = self.state()["stages"]
        training = stages.get("train", {}).get("summary") or {}
        extra = {
            "recipe": self.recipe.name,
            "run directory": str(self.root),
            "student": self.student_path(),
            "prompt format": stages.get("dataset", {}).get("summary", {}).get("format"),
            "bootstrap": stages.get("bootstrap", {}).get("summary"),
            "dataset rows": stages.get("dataset", {}).get("summary", {}).get("counts"),
            # Counted when the dataset was built, with the student's tokenizer (None: a tiny
            # student, or one not on this machine; training's count below still holds).
            "rows too long for the student (dataset)": stages.get("dataset", {})
            .get("summary", {})
            .get("too_long"),
            # Rows too long for max_length (or the student's context) are dropped, never cut.
            "rows dropped for length": {
                name: _dropped(entry.get("metrics", {}).get("rows", {}))
                for name, entry in training.items()
            },
            "training": training,
        }

        optimized = self.root / "optimize" / "result.json"
        steps = json.loads(optimized.read_text()) if optimizing and optimized.exists() else None
        final = SYSTEMS["optimized"] if steps is not None else SYSTEMS["trained"]

        def run() -> dict[str, Any]:
            path = write_report(
                self.root / "report",
                systems,
                train_logs=logs,
                title=f"apprentice report: {self.recipe.name}",
                extra=extra,
                optimize=steps,
                candidate=final if any(s.name == final for s in systems) else SYSTEMS["trained"],
            )
            return {"report": str(path)}

        # Cheap and always current: the report is rewritten on every call.
        return self._stage("report", "", run, exists=False)


def _dropped(rows: dict[str, Any]) -> dict[str, str]:
    """Per split: how many rows training dropped for length, of how many."""
    return {
        split: f"{r.get('prompts_too_long', 0) + r.get('targets_too_long', 0)} of {r.get('rows')}"
        for split, r in rows.items()
    }


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
