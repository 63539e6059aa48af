"""BootstrapFinetune: bootstrap -> dataset -> train -> export -> bind the student.

The returned program is a copy of the input whose predictors are each bound to the
student (base model + its adapter) through the local backend; ``program.save()``
records that binding and ``load()`` restores a runnable student.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from apprentice.files import exclusive, folder_lock
from apprentice.module import Module
from apprentice.optimize.labeled import Optimizer, _check_trainset

__all__ = ["BootstrapFinetune", "adapter_groups", "bind_student"]

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
    ) -> None:
        from apprentice.train.config import LoraConfig, TrainConfig

        self.metric = metric
        self.student = str(student)
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
        self.results: dict[str, Any] = {}

    def compile(self, student, *, trainset, teacher=None, valset=None) -> Module:
        from apprentice.progress import library_bars, show_progress

        with library_bars(show_progress(self.progress)):
            return self._compile(student, trainset=trainset, teacher=teacher)

    def _compile(self, student, *, trainset, teacher) -> Module:
        examples = _check_trainset(trainset)
        run_dir = self.run_dir or Path(tempfile.mkdtemp(prefix="apprentice-finetune-"))
        with exclusive(folder_lock(run_dir), f"run directory {run_dir}"):
            return self._compile_in(run_dir, student, examples, teacher)

    def _compile_in(self, run_dir: Path, student, examples, teacher) -> Module:
        from apprentice.dataset.build import build_dataset
        from apprentice.traces.bootstrap import bootstrap_traces
        from apprentice.traces.store import TraceStoreMismatch
        from apprentice.train.sft import train_adapter

        try:
            boot = bootstrap_traces(
                student,
                examples,
                teacher=teacher,
                metric=self.metric,
                store=run_dir / "traces",
                concurrency=self.concurrency,
                attempts=self.attempts,
                threshold=self.threshold,
                progress=self.progress,
                reset=self.reset_traces,
                retry_failed=self.retry_failed,
            )
        except TraceStoreMismatch as exc:
            raise TraceStoreMismatch(
                f"{exc}. With BootstrapFinetune: pass reset_traces=True (the old traces are "
                "moved aside, never deleted), or use another run_dir"
            ) from None
        self.results["bootstrap"] = boot.summary()
        try:
            dataset = build_dataset(
                run_dir / "traces",
                student,
                run_dir / "dataset",
                threshold=self.threshold,
                multitask=self.multitask,
                val_fraction=self.val_fraction,
            )
        except ValueError as exc:
            if not boot.skipped:
                raise
            raise ValueError(
                f"{exc} ({boot.skipped} of them were reused from an earlier run in "
                f"{run_dir / 'traces'}: pass retry_failed=True to run the failed ones again, "
                "or reset_traces=True to start over)"
            ) from None
        self.results["dataset"] = {"counts": dataset.counts, "drops": dataset.drops}
        groups = adapter_groups(student, self.multitask)
        trained: dict[str, Any] = {}
        for name, group in groups.items():
            trained[name] = train_adapter(
                run_dir / "dataset",
                self.student,
                run_dir / "adapters" / name,
                lora=self.lora,
                train=self.train,
                predictors=group,
                name=name,
                progress=self.progress,
            )
        self.results["train"] = {n: r.metrics for n, r in trained.items()}

        program = bind_student(student, groups, trained, self.student, self.lm_options)
        log.info("BootstrapFinetune: %s", self.results)
        return program


def adapter_groups(program: Module, multitask: bool) -> dict[str, list[str]]:
    """Adapter name -> the predictor paths it is trained on: one ``multitask`` adapter, or one
    per predictor (named by its path with dots as underscores)."""
    paths = [path for path, _ in program.named_predictors()]
    if multitask:
        return {"multitask": paths}
    return {path.replace(".", "_"): [path] for path in paths}


def bind_student(
    program: Module,
    groups: dict[str, list[str]],
    trained: dict[str, Any],
    student: str,
    lm_options: dict[str, Any] | None = None,
) -> Module:
    """A copy of ``program`` with each predictor bound to the student and its adapter
    (``trained``: adapter name -> TrainResult); a full finetune is served as its own base."""
    from apprentice.lm.local import LocalLM
    from apprentice.train.export import adapter_hash

    lm_options = dict(lm_options or {})
    program = program.deepcopy()
    by_path = {path: name for name, group in groups.items() for path in group}
    for path, predictor in program.named_predictors():
        result = trained[by_path[path]]
        if result.manifest.method == "full":
            lm = LocalLM(result.adapter_dir, **lm_options)
        else:
            name = result.manifest.name
            engine = LocalLM(student, **lm_options).engine
            if name in engine.adapter_names() and engine.adapter_hash(name) != adapter_hash(
                result.adapter_dir
            ):
                # Another run's adapter of the same name is loaded on this base: both stay
                # served, this one under a name that carries its content hash.
                name = f"{name}-{adapter_hash(result.adapter_dir)[:8]}"
            lm = LocalLM(student, adapters={name: result.adapter_dir}, adapter=name, **lm_options)
        predictor.lm = lm
    return program
