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

from apprentice.module import Module
from apprentice.optimize.labeled import Optimizer, _check_trainset

__all__ = ["BootstrapFinetune"]

log = logging.getLogger(__name__)


class BootstrapFinetune(Optimizer):
    """``BootstrapFinetune(metric=..., student="path/or/hub-name", train=TrainConfig(...),
    lora=LoraConfig(...)).compile(program, trainset=..., teacher=lm)``.

    ``multitask=True`` trains one adapter on every predictor's rows; ``False`` trains one
    adapter per predictor. ``run_dir`` keeps every artifact (traces, dataset, adapters);
    re-running with the same run_dir resumes and reuses finished traces.
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
        self.results: dict[str, Any] = {}

    def compile(self, student, *, trainset, teacher=None, valset=None) -> Module:
        from apprentice.dataset.build import build_dataset
        from apprentice.lm.local import LocalLM
        from apprentice.traces.bootstrap import bootstrap_traces
        from apprentice.train.sft import train_adapter

        examples = _check_trainset(trainset)
        run_dir = self.run_dir or Path(tempfile.mkdtemp(prefix="apprentice-finetune-"))
        run_dir.mkdir(parents=True, exist_ok=True)
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
        )
        self.results["bootstrap"] = boot.summary()
        dataset = build_dataset(
            run_dir / "traces",
            student,
            run_dir / "dataset",
            threshold=self.threshold,
            multitask=self.multitask,
            val_fraction=self.val_fraction,
        )
        self.results["dataset"] = {"counts": dataset.counts, "drops": dataset.drops}
        paths = [path for path, _ in student.named_predictors()]
        groups = {"multitask": paths} if self.multitask else {path: [path] for path in paths}
        trained: dict[str, Any] = {}
        for name, group in groups.items():
            safe = name.replace(".", "_")
            trained[name] = train_adapter(
                run_dir / "dataset",
                self.student,
                run_dir / "adapters" / safe,
                lora=self.lora,
                train=self.train,
                predictors=group,
                name=safe,
                progress=self.progress,
            )
        self.results["train"] = {n: r.metrics for n, r in trained.items()}

        program = student.deepcopy()
        by_path = {path: name for name, group in groups.items() for path in group}
        for path, predictor in program.named_predictors():
            result = trained[by_path[path]]
            if result.manifest.method == "full":
                lm = LocalLM(result.adapter_dir, **self.lm_options)
            else:
                lm = LocalLM(
                    self.student,
                    adapters={result.manifest.name: result.adapter_dir},
                    **self.lm_options,
                )
                lm = lm.with_adapter(result.manifest.name)
            predictor.lm = lm
        log.info("BootstrapFinetune: %s", self.results)
        return program
