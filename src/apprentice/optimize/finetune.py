"""BootstrapFinetune: bootstrap -> dataset -> train -> bind the student, from Python.

It runs the same stages as ``apprentice distill`` (``apprentice/pipeline.py``), with the
same stage hashes, resume and guards, in ``run_dir``. The returned program is a copy of the
input whose predictors are each bound to the student (base model + its adapter) on the
backend ``serve`` names (default: the local engine); ``program.save()`` records that
binding and ``load()`` restores a runnable student.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from apprentice.module import Module
from apprentice.optimize.labeled import Optimizer, _check_trainset
from apprentice.pipeline import adapter_groups

__all__ = ["BootstrapFinetune", "adapter_groups"]

log = logging.getLogger(__name__)


class BootstrapFinetune(Optimizer):
    """``BootstrapFinetune(metric=..., student="path/or/hub-name", train=TrainConfig(...),
    lora=LoraConfig(...)).compile(program, trainset=..., teacher=lm)``.

    ``multitask=True`` trains one adapter on every predictor's rows; ``False`` trains one
    adapter per predictor. ``run_dir`` keeps every artifact (traces, dataset, adapters);
    re-running with the same run_dir resumes and reuses finished traces, as long as the
    program, teacher, trainset and metric (their code included) are the same; when one
    changed, compile raises ``TraceStoreMismatch`` naming it. ``reset_traces=True`` moves
    the old traces aside and runs the teacher again (its cached replies cost nothing);
    ``retry_failed=True`` runs again only the examples whose trace failed. One process at a
    time works in a run_dir.

    ``serve``: a ``ServeConfig`` (or its fields as a dict) naming the backend the student is
    bound to: ``local``, ``vllm`` or ``openai`` (a running server the adapters are loaded
    into). ``lm_options`` go to that LM's constructor as they are. ``format``: the student's
    prompts: ``chat`` (markers, the model's chat template), ``json``, ``t5`` (what a T5
    tokenizer keeps), or ``auto`` (t5 for a seq2seq student, else chat). The compiled
    program keeps it: each predictor is bound to the format its adapter was trained on.
    ``chat_template``: a causal student's chat template instead of its tokenizer's (a Jinja
    file or text, or ``none`` for the plain layout), trained and served alike.
    ``max_cost_usd``: no new teacher run starts once the teacher (an LM with a price table)
    has cost this much in this run_dir; compile stops with what was traced kept, and a
    higher cap goes on from there (``bootstrap.max_cost_usd`` of a recipe).
    ``loading``: how the base model loads for training and serving (a ``StudentLoading`` or
    its fields as a dict: revision, dtype, attn_implementation, load_in_4bit,
    trust_remote_code; a recipe's ``student`` section); None = the defaults.
    """

    def __init__(
        self,
        *,
        metric: Callable[..., Any] | None = None,
        student: str | os.PathLike,
        multitask: bool = True,
        train: Any = None,
        lora: Any = None,
        threshold: float | None = None,
        concurrency: int = 16,
        attempts: int = 1,
        val_fraction: float = 0.1,
        run_dir: str | os.PathLike | None = None,
        progress: bool = True,
        lm_options: dict[str, Any] | None = None,
        retry_failed: bool = False,
        reset_traces: bool = False,
        serve: Any = None,
        format: str = "auto",
        chat_template: str | None = None,
        max_cost_usd: float | None = None,
        loading: Any = None,
    ) -> None:
        from apprentice.serve.config import ServeConfig
        from apprentice.student_loading import StudentLoading
        from apprentice.train.config import LoraConfig, TrainConfig

        self.metric = metric
        # The student's base model (a path, hub name or .gguf); the program to compile is
        # compile()'s first argument, DSPy's `student`.
        self.base_model = str(student)
        self.multitask = multitask
        self.train = train or TrainConfig()
        self.lora = lora or LoraConfig()
        self.threshold = threshold
        self.concurrency = concurrency
        self.attempts = attempts
        self.val_fraction = val_fraction
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.progress = progress
        self.lm_options = dict(lm_options or {})
        self.retry_failed = retry_failed
        self.reset_traces = reset_traces
        self.serve = serve if isinstance(serve, ServeConfig) else ServeConfig(**(serve or {}))
        self.format = format
        self.chat_template = chat_template
        self.max_cost_usd = max_cost_usd
        self.loading = (
            StudentLoading.model_validate(loading) if isinstance(loading, dict) else loading
        )
        self.results: dict[str, Any] = {}

    def compile(self, student, *, trainset, teacher=None, valset=None) -> Module:
        """``student`` is the program to compile (DSPy's name for it); the model it is
        distilled into is the constructor's ``student=`` (kept as ``self.base_model``)."""
        from apprentice.pipeline import Pipeline

        examples = _check_trainset(trainset)
        run_dir = self.run_dir or Path(tempfile.mkdtemp(prefix="apprentice-finetune-"))
        pipeline = Pipeline(run_dir, self._job(student, examples, teacher), progress=self.progress)
        with pipeline._exclusive():  # held across the stages, so no one slips in between
            # results fill as stages finish, so a failure later still shows what ran
            self.results["bootstrap"] = pipeline.bootstrap().summary
            dataset = pipeline.dataset().summary
            self.results["dataset"] = {k: dataset[k] for k in ("counts", "drops")}
            trained = pipeline.train().summary
            self.results["train"] = {name: t["metrics"] for name, t in trained.items()}
            pipeline.bind()
        log.info("BootstrapFinetune: %s", self.results)
        return pipeline.compiled_program()

    def _job(self, student: Module, examples, teacher):
        from apprentice.pipeline import Job
        from apprentice.recipe_sections import BootstrapConfig, DatasetConfig

        return Job(
            make_program=student.deepcopy,
            trainset=examples,
            metric=self.metric,
            make_teacher=lambda cache: teacher,
            student=self.base_model,
            chat_template=self.chat_template,
            bootstrap=BootstrapConfig(
                threshold=self.threshold,
                attempts=self.attempts,
                concurrency=self.concurrency,
                retry_failed=self.retry_failed,
                max_cost_usd=self.max_cost_usd,
            ),
            dataset=DatasetConfig(
                multitask=self.multitask, val_fraction=self.val_fraction, format=self.format
            ),
            lora=self.lora,
            train=self.train,
            serve=self.serve,
            teacher_key=repr(getattr(teacher, "identity", None) or type(teacher).__name__),
            reset_traces=self.reset_traces,
            lm_options=self.lm_options,
            loading=self.loading,
            hints={
                "mismatch": "With BootstrapFinetune: pass reset_traces=True (the old traces "
                "are moved aside, never deleted), or use another run_dir",
                "reused": "pass retry_failed=True to run the failed ones again, or "
                "reset_traces=True to start over",
            },
        )
