"""The run directory: one folder per distillation run, and the stages that fill it.

    runs/<name>/
      recipe.yaml        the recipe as run (overrides applied)
      run.json           each stage's input hash, status, time and summary
      cache/             the teacher's response cache (re-runs never pay twice)
      traces/            bootstrap: append-only trace store + manifest
      dataset/           dataset: HF datasets on disk + manifest
      student/           a tiny student built from config (offline demos only)
      adapters/<name>/   train: checkpoints, train_log.jsonl, adapter/ (PEFT dir + manifest)
      program.json       the compiled program, bound to the student
      eval/<system>.json eval: teacher, untrained student, trained student on the dev set
      report/            report.md + PNG plots

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
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from apprentice.files import atomic_write, exclusive, folder_lock, set_aside
from apprentice.progress import library_bars, show_progress
from apprentice.recipe import Recipe, RecipeError, load_recipe

__all__ = ["STAGES", "Run", "StageOutcome"]

log = logging.getLogger(__name__)

SCHEMA = "apprentice.run"
VERSION = 1
STAGES = ("bootstrap", "dataset", "train", "eval", "report")
SYSTEMS = {
    "teacher": "teacher",
    "untrained": "student (untrained)",
    "fewshot": "student (untrained, few-shot)",
    "trained": "student (trained)",
}


@dataclass
class StageOutcome:
    stage: str
    status: str  # "ran" | "reused" | "resumed"
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)


def _hash(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Run:
    """``Run.open("recipes/demo/causal.yaml")`` or ``Run.open("runs/demo-causal")``."""

    def __init__(self, recipe: Recipe, root: Path, *, progress: bool = True) -> None:
        self.recipe = recipe
        self.root = root
        self.progress = show_progress(progress)  # no bars in a log file
        self.outcomes: list[StageOutcome] = []
        self._lock = folder_lock(root)

    def _exclusive(self):
        """Held while this process writes into the run directory."""
        return exclusive(self._lock, f"run directory {self.root}")

    # -- opening ----------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        target: str | os.PathLike,
        *,
        overrides: list[str] | None = None,
        run_dir: str | os.PathLike | None = None,
        progress: bool = True,
    ) -> Run:
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
        root.mkdir(parents=True, exist_ok=True)
        run = cls(recipe, root, progress=progress)
        with run._exclusive():
            run._write_recipe()
        return run

    def _write_recipe(self) -> None:
        data = self.recipe.model_dump(mode="json", exclude_none=False)
        text = "# apprentice distill " + str(self.root / "recipe.yaml") + "\n"
        text += yaml.safe_dump(data, sort_keys=False)
        atomic_write(self.root / "recipe.yaml", text)

    # -- state ------------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.root / "run.json"

    def state(self) -> dict[str, Any]:
        if not self.state_file.exists():
            return {"schema": SCHEMA, "version": VERSION, "stages": {}}
        data = json.loads(self.state_file.read_text())
        if data.get("schema") != SCHEMA:
            raise RecipeError(f"{self.state_file} is not an apprentice run file")
        return data

    def _record(self, stage: str, **entry: Any) -> None:
        data = self.state()
        data["stages"][stage] = {**data["stages"].get(stage, {}), **entry, "updated": time.time()}
        atomic_write(self.state_file, json.dumps(data, indent=2, default=str))

    def _done(self, stage: str, key: str) -> dict[str, Any] | None:
        entry = self.state()["stages"].get(stage)
        if entry and entry.get("status") == "done" and entry.get("hash") == key:
            return entry
        return None

    def _stage(self, stage: str, key: str, fn: Callable[[], dict[str, Any]], *, exists: bool):
        with self._exclusive():
            return self._run_stage(stage, key, fn, exists=exists)

    def _run_stage(self, stage: str, key: str, fn: Callable[[], dict[str, Any]], *, exists: bool):
        reused = self._done(stage, key) if exists else None
        if reused is not None:
            outcome = StageOutcome(stage, "reused", 0.0, reused.get("summary", {}))
        else:
            started = self.state()["stages"].get(stage, {})
            resumed = started.get("status") == "running" and started.get("hash") == key
            self._record(stage, hash=key, status="running")
            t0 = time.perf_counter()
            with library_bars(self.progress):
                summary = fn()
            seconds = time.perf_counter() - t0
            self._record(stage, hash=key, status="done", seconds=seconds, summary=summary)
            outcome = StageOutcome(stage, "resumed" if resumed else "ran", seconds, summary)
        self.outcomes.append(outcome)
        return outcome

    # -- paths ------------------------------------------------------------------------------
    @property
    def traces_dir(self) -> Path:
        return self.root / "traces"

    @property
    def dataset_dir(self) -> Path:
        return self.root / "dataset"

    @property
    def program_file(self) -> Path:
        return self.root / "program.json"

    def student_path(self) -> str:
        if self.recipe.student.model is not None:
            return self.recipe.student.model
        return str(self.root / "student")

    def _require(self, path: Path, stage: str) -> None:
        if not path.exists():
            raise RecipeError(
                f"{path} is missing: run 'apprentice {stage} {self.root}' (or 'apprentice "
                f"distill') first"
            )

    # -- stages -----------------------------------------------------------------------------
    def distill(self) -> list[StageOutcome]:
        with self._exclusive():  # held across the stages, so no one slips in between
            for stage in STAGES:
                getattr(self, stage)()
        return self.outcomes

    def bootstrap(self) -> StageOutcome:
        from apprentice.traces.bootstrap import (
            bootstrap_traces,
            dataset_hash,
            passes,
            program_hash,
        )
        from apprentice.traces.store import TraceStore, TraceStoreMismatch

        r = self.recipe
        program = r.make_program()
        trainset = r.load_split("train")
        metric = r.make_metric()
        key = _hash(
            program_hash(program), dataset_hash(trainset), r.section_hash("teacher", "bootstrap")
        )

        def run() -> dict[str, Any]:
            teacher = r.make_teacher(cache_dir=self.root / "cache")
            try:
                result = bootstrap_traces(
                    program,
                    trainset,
                    teacher=teacher,
                    metric=metric,
                    store=self.traces_dir,
                    concurrency=r.bootstrap.concurrency,
                    attempts=r.bootstrap.attempts,
                    threshold=r.bootstrap.threshold,
                    progress=self.progress,
                    retry_failed=r.bootstrap.retry_failed,
                )
            except TraceStoreMismatch as exc:
                raise RecipeError(
                    f"{self.traces_dir} holds traces made by another program, teacher, dataset "
                    f"or metric ({exc}); use a new --run-dir, or move that folder away to start "
                    "over (the teacher's replies are cached in the run, so re-running is cheap)"
                ) from None
            previous = self.state()["stages"].get("bootstrap", {}).get("summary", {})
            summary = result.summary()
            cost = teacher.usage.summary().get("cost_usd") or 0.0
            summary["teacher_cost_usd"] = round(previous.get("teacher_cost_usd_total", 0) + cost, 6)
            summary["teacher_cost_usd_total"] = summary["teacher_cost_usd"]
            # What the store holds now, over every run that filled it.
            threshold = r.bootstrap.threshold
            stored = list(TraceStore(self.traces_dir))
            summary["traces"] = len(stored)
            summary["passing"] = sum(passes(t, threshold) for t in stored)
            summary["failed_traces"] = sum(not t.ok for t in stored)
            return summary

        # Always runs: the store skips traced examples, so a finished bootstrap costs nothing.
        return self._stage("bootstrap", key, run, exists=False)

    def dataset(self) -> StageOutcome:
        from apprentice.dataset.build import build_dataset
        from apprentice.formats import ChatFormat, JSONFormat
        from apprentice.traces.bootstrap import program_hash
        from apprentice.traces.store import TraceStore

        r = self.recipe
        self._require(self.traces_dir / "traces.jsonl", "bootstrap")
        program = r.make_program()
        store = TraceStore(self.traces_dir)
        key = _hash(
            store.content_hash(),
            program_hash(program),
            r.section_hash("dataset"),
            r.bootstrap.threshold,
        )

        def run() -> dict[str, Any]:
            fmt = ChatFormat() if r.dataset.format == "chat" else JSONFormat()
            manifest = build_dataset(
                store,
                program,
                self.dataset_dir,
                threshold=r.bootstrap.threshold,
                multitask=r.dataset.multitask,
                val_fraction=r.dataset.val_fraction,
                format=fmt,
            )
            return {
                "counts": manifest.counts,
                "drops": manifest.drops,
                "hash": manifest.content_hash,
            }

        return self._stage(
            "dataset", key, run, exists=(self.dataset_dir / "manifest.json").exists()
        )

    def _ensure_student(self, dataset_hash: str) -> str:
        """The student's path; a tiny student is built from the training rows on first use."""
        tiny = self.recipe.student.tiny
        if tiny is None:
            return self.student_path()
        from apprentice.dataset.build import load_dataset_dir
        from apprentice.formats import messages_to_prompt
        from apprentice.train.tiny import make_tiny_student

        path = Path(self.student_path())
        stamp = path / "apprentice_tiny.json"
        want = {"tiny": tiny.model_dump(), "dataset": dataset_hash}
        if stamp.exists() and json.loads(stamp.read_text()) == want:
            return str(path)
        data, _ = load_dataset_dir(self.dataset_dir)
        corpus = [messages_to_prompt(row["messages"]) + row["completion"] for row in data["train"]]
        if path.exists():
            shutil.rmtree(path)
        make_tiny_student(
            tiny.kind,
            corpus,
            path,
            vocab_size=tiny.vocab_size,
            hidden_size=tiny.hidden_size,
            num_layers=tiny.num_layers,
            num_heads=tiny.num_heads,
            seed=tiny.seed,
        )
        stamp.write_text(json.dumps(want))
        return str(path)

    def _teacher_code(self) -> str | None:
        """The scripted teacher's code hash (its import path alone misses an edit)."""
        from apprentice.fingerprint import code_fingerprint
        from apprentice.recipe import import_object

        t = self.recipe.teacher
        return code_fingerprint(import_object(t.script, "teacher.script")) if t.script else None

    def _tiny_stamp(self) -> str | None:
        stamp = Path(self.student_path()) / "apprentice_tiny.json"
        return stamp.read_text() if self.recipe.student.tiny and stamp.exists() else None

    def train(self) -> StageOutcome:
        from apprentice.dataset.build import load_dataset_dir
        from apprentice.optimize.finetune import adapter_groups, bind_student
        from apprentice.train.sft import TrainResult, train_adapter

        r = self.recipe
        self._require(self.dataset_dir / "manifest.json", "dataset")
        _, manifest = load_dataset_dir(self.dataset_dir)
        program = r.make_program()
        groups = adapter_groups(program, r.dataset.multitask)
        key = _hash(
            manifest.content_hash,
            r.section_hash("student", "lora", "train", "serve"),
            self.student_path(),
            groups,
        )
        adapters = {name: self.root / "adapters" / name for name in groups}
        finished = all((d / "adapter" / "manifest.json").exists() for d in adapters.values())

        def run() -> dict[str, Any]:
            student = self._ensure_student(manifest.content_hash)
            trained: dict[str, TrainResult] = {}
            for name, group in groups.items():
                # The trainer reuses a finished adapter or resumes a checkpoint of this same
                # training run, and sets aside another run's (train/resume.py).
                trained[name] = train_adapter(
                    self.dataset_dir,
                    student,
                    adapters[name],
                    lora=r.lora,
                    train=r.train,
                    predictors=group,
                    name=name,
                    progress=self.progress,
                )
            compiled = bind_student(program, groups, trained, student, self._lm_options())
            compiled.save(self.program_file)
            return {
                name: {
                    k: t.metrics.get(k)
                    for k in ("steps", "final_train_loss", "final_val_loss", "elapsed_s")
                }
                | {"method": t.manifest.method, "servable": t.manifest.servable}
                for name, t in trained.items()
            }

        return self._stage("train", key, run, exists=finished and self.program_file.exists())

    def _set_aside(self, dirs) -> None:
        # A changed recipe makes old checkpoints useless for resuming, but they are never
        # deleted: each earlier run's adapters move to adapters/.previous/<name>.<time>.
        for d in dirs:
            if d.exists():
                target = set_aside(d, d.parent / ".previous")
                log.warning("recipe changed: moved %s to %s", d, target)

    def _lm_options(self) -> dict[str, Any]:
        s = self.recipe.serve
        return {
            "device": s.device,
            "max_batch_size": s.max_batch_size,
            "max_new_tokens": s.max_new_tokens,
        }

    def compiled_program(self):
        self._require(self.program_file, "train")
        # trusted: written by this run, whose recipe already runs code of its choosing
        return self.recipe.make_program().load(self.program_file, trusted=True)

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
            teacher=r.make_teacher(cache_dir=self.root / "cache"),
        )

    def eval(self) -> StageOutcome:
        from apprentice.evaluate.report import SystemEval, evaluate_system
        from apprentice.fingerprint import code_fingerprint
        from apprentice.lm.local import LocalLM
        from apprentice.traces.bootstrap import dataset_hash, program_hash

        r = self.recipe
        self._require(self.program_file, "train")
        devset = r.load_split("dev")
        metric = r.make_metric()

        # The metric's and program's code, not only their import paths: fixing either
        # re-scores every system.
        base = _hash(
            dataset_hash(devset),
            r.section_hash("eval", "metric", "program"),
            code_fingerprint(metric),
            program_hash(r.make_program()),
        )
        keys = {
            "teacher": _hash(base, r.section_hash("teacher"), self._teacher_code()),
            "untrained": _hash(
                base, self.student_path(), r.section_hash("student", "serve"), self._tiny_stamp()
            ),
            "fewshot": _hash(
                base,
                self.student_path(),
                r.section_hash("student", "serve", "teacher", "data", "bootstrap"),
                self._tiny_stamp(),
            ),
            # The train stage's record changes whenever adapters are retrained in place.
            "trained": _hash(
                base, _file_hash(self.program_file), self.state()["stages"].get("train")
            ),
        }
        wanted = (
            ["teacher"] * r.eval.teacher
            + ["untrained"] * r.eval.untrained
            + ["fewshot"] * bool(r.eval.fewshot)
            + ["trained"]
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
                    program.set_lm(r.make_teacher(cache_dir=self.root / "cache"))
                elif system in ("untrained", "fewshot"):
                    program = r.make_program() if system == "untrained" else self._fewshot()
                    options = self._lm_options()
                    options["max_new_tokens"] = r.eval.untrained_max_new_tokens
                    program.set_lm(LocalLM(self.student_path(), **options))
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

        key = _hash(*[keys[s] for s in wanted])
        exists = all((out_dir / f"{s}.json").exists() for s in wanted)
        return self._stage("eval", key, run, exists=exists)

    def report(self) -> StageOutcome:
        from apprentice.evaluate.report import SystemEval, write_report

        out = self.root / "eval"
        systems = []
        for system in SYSTEMS:
            path = out / f"{system}.json"
            if path.exists():
                systems.append(SystemEval.from_dict(json.loads(path.read_text())["eval"]))
        if not systems:
            self._require(out / "trained.json", "eval")
        logs = {
            p.parent.name: p for p in sorted((self.root / "adapters").glob("*/train_log.jsonl"))
        }
        stages = self.state()["stages"]
        extra = {
            "recipe": self.recipe.name,
            "run directory": str(self.root),
            "student": self.student_path(),
            "bootstrap": stages.get("bootstrap", {}).get("summary"),
            "dataset rows": stages.get("dataset", {}).get("summary", {}).get("counts"),
            "training": stages.get("train", {}).get("summary"),
        }

        def run() -> dict[str, Any]:
            path = write_report(
                self.root / "report",
                systems,
                train_logs=logs,
                title=f"apprentice report: {self.recipe.name}",
                extra=extra,
            )
            return {"report": str(path)}

        # Cheap and always current: the report is rewritten on every call.
        return self._stage("report", "", run, exists=False)


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
