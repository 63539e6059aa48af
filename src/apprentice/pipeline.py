"""The distillation pipeline, written once: bootstrap -> dataset -> train -> bind.

``apprentice distill`` (``run.Run``, from a recipe) and ``BootstrapFinetune.compile`` (from
Python objects) both describe their work as a ``Job`` and run these stages over one run
directory, so both get the same stage hashes, resume, guards and artifacts:

    run_dir/
      run.json           each stage's input hash, status, time and summary
      traces/            bootstrap: append-only trace store + manifest
      dataset/           dataset: HF datasets on disk + manifest
      student/           a tiny student built from config (offline demos only)
      adapters/<name>/   train: checkpoints, train_log.jsonl, adapter/ (PEFT dir + manifest)
      program.json       bind: the compiled program, bound to the student on its backend

A stage whose input hash is unchanged and whose output exists is reused; an interrupted one
resumes (the trace store skips traced examples, training restarts from its newest
checkpoint). A changed training recipe moves the old adapters aside, never deleting them.
Serving options only re-bind: changing ``serve`` never retrains.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apprentice.files import atomic_write, exclusive, folder_lock
from apprentice.progress import library_bars, show_progress
from apprentice.student_prompt import (
    check_context,
    length_check,
    prompt_template,
    student_format,
    too_long,
)

__all__ = ["Job", "Pipeline", "StageOutcome", "adapter_groups"]

log = logging.getLogger(__name__)

SCHEMA = "apprentice.run"
VERSION = 1


class StageError(ValueError):
    """A stage cannot run: what is missing or wrong, and what to do."""


@dataclass
class StageOutcome:
    stage: str
    status: str  # "ran" | "reused" | "resumed"
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class Job:
    """What the stages need, however it was given (a recipe or Python objects).

    ``make_program`` and ``make_teacher`` give fresh objects on each call (the teacher gets
    the folder for its reply cache, ``Pipeline.teacher_cache_dir``). ``student`` is the base model (a path, hub name or ``.gguf``);
    with ``tiny`` it is the folder a tiny student is built in. The ``hints`` finish error
    messages with the way out in the caller's terms (recipe keys or Python arguments).
    """

    make_program: Callable[[], Any]
    trainset: Sequence[Any]
    metric: Callable[..., Any] | None
    make_teacher: Callable[[Path], Any]
    student: str
    bootstrap: Any  # recipe_sections.BootstrapConfig
    dataset: Any  # recipe_sections.DatasetConfig
    lora: Any  # train.config.LoraConfig
    train: Any  # train.config.TrainConfig
    serve: Any  # serve.config.ServeConfig
    tiny: Any = None  # recipe_sections.TinyStudent
    chat_template: str | None = None  # a Jinja file or text, "none", or None (the tokenizer's)
    loading: Any = None  # student_loading.StudentLoading: how the base loads; None = defaults
    teacher_key: str = ""
    reset_traces: bool = False
    lm_options: dict[str, Any] = field(default_factory=dict)
    hints: dict[str, str] = field(default_factory=dict)


def _hash(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _section(config: Any) -> Any:
    return config.model_dump(mode="json") if hasattr(config, "model_dump") else config


def _loading_key(loading: Any, *, hub_only: bool = False) -> list[Any]:
    """A stage key's part for how the student loads: nothing for the defaults (older runs
    keep their keys), else the options set (``hub_only``: those that choose the config and
    tokenizer, revision and remote code)."""
    changed = loading.hub_options() if hub_only else loading.changed()
    return [changed] if changed else []


def adapter_groups(program: Any, multitask: bool) -> dict[str, list[str]]:
    """Adapter name -> the predictor paths it is trained on: one ``multitask`` adapter, or one
    per predictor, named by its path with every character other than a letter, digit or
    ``_`` written as ``_`` (``hops.0.generate`` -> ``hops_0_generate``). Paths whose names
    would be the same (``a.b`` and ``a_b``) each get ``-`` and a hash of the exact path
    (``a_b-3f2c9e1a``); a plain name has no ``-``, so no two names can be the same."""
    paths = [path for path, _ in program.named_predictors()]
    if multitask:
        return {"multitask": paths}
    slugs = {path: re.sub(r"[^A-Za-z0-9_]", "_", path) for path in paths}
    taken = Counter(slugs.values())
    groups = {}
    for path, slug in slugs.items():
        if taken[slug] > 1:
            slug = f"{slug}-{hashlib.sha256(path.encode()).hexdigest()[:8]}"
        groups[slug] = [path]
    if len(groups) != len(paths):  # two 32-bit hashes alike: say so rather than overwrite
        raise StageError(f"predictor paths {paths} give adapter names that collide: rename one")
    return groups


class Pipeline:
    """The stages of ``job`` over the run directory ``root``; one process at a time."""

    def __init__(self, root: Path, job: Job, *, progress: bool = True) -> None:
        self.root = Path(root)
        self.job = job
        # Our loops draw a bar on a terminal and plain lines in a log (progress_bar); the
        # libraries' bars only on a terminal.
        self.progress = bool(progress)
        self.library_bars = show_progress(progress)
        self.outcomes: list[StageOutcome] = []
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = folder_lock(self.root)

    def _exclusive(self):
        """Held while this process writes into the run directory."""
        return exclusive(self._lock, f"run directory {self.root}")

    # -- state ------------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.root / "run.json"

    def state(self) -> dict[str, Any]:
        if not self.state_file.exists():
            return {"schema": SCHEMA, "version": VERSION, "stages": {}}
        data = json.loads(self.state_file.read_text())
        if data.get("schema") != SCHEMA:
            raise StageError(f"{self.state_file} is not an apprentice run file")
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
            reused = self._done(stage, key) if exists else None
            if reused is not None:
                outcome = StageOutcome(stage, "reused", 0.0, reused.get("summary", {}))
            else:
                started = self.state()["stages"].get(stage, {})
                resumed = started.get("status") == "running" and started.get("hash") == key
                self._record(stage, hash=key, status="running")
                t0 = time.perf_counter()
                with library_bars(self.library_bars):
                    summary = fn()
                seconds = time.perf_counter() - t0
                self._record(stage, hash=key, status="done", seconds=seconds, summary=summary)
                outcome = StageOutcome(stage, "resumed" if resumed else "ran", seconds, summary)
        self.outcomes.append(outcome)
        return outcome

    # -- paths ------------------------------------------------------------------------------
    def teacher_cache_dir(self) -> Path:
        """Where the teacher's replies are cached: the user's cache folder
        (``APPRENTICE_CACHE_DIR``, else ``~/.cache/apprentice``), shared by every run and
        keyed by the request and the teacher's identity, so a new run directory (or
        ``reset_traces``) does not pay the teacher again for a call it made before. A run
        directory made before this has its own ``cache/`` folder, and keeps using it."""
        from apprentice.lm.cache import default_cache_path

        legacy = self.root / "cache"
        return legacy if legacy.is_dir() else default_cache_path().parent

    @property
    def traces_dir(self) -> Path:
        return self.root / "traces"

    @property
    def dataset_dir(self) -> Path:
        return self.root / "dataset"

    @property
    def program_file(self) -> Path:
        return self.root / "program.json"

    def adapter_dirs(self) -> dict[str, Path]:
        groups = adapter_groups(self.job.make_program(), self.job.dataset.multitask)
        return {name: self.root / "adapters" / name for name in groups}

    def hints(self) -> dict[str, str]:
        """The job's advice for the errors the stages raise."""
        return self.job.hints

    def require(self, path: Path, stage: str) -> None:
        """``path``, the output of ``stage``, exists and ``stage`` finished: a stage that was
        killed or failed half-way is not read by the stages after it."""
        hint = self.hints().get("require", "run the {stage} stage first")
        hint = hint.format(stage=stage, root=self.root)
        entry = self.state()["stages"].get(stage)
        if entry is not None and entry.get("status") != "done":
            raise StageError(
                f"the {stage} stage in {self.root} did not finish (status "
                f"{entry.get('status')!r} since {time.ctime(entry.get('updated', 0))}: it was "
                f"killed or failed), so its output may be partial: {hint}"
            )
        if not path.exists():
            raise StageError(f"{path} is missing: {hint}")

    # -- stages -----------------------------------------------------------------------------
    def bootstrap(self) -> StageOutcome:
        """Runs the teacher over the training examples into the trace store."""
        from apprentice.traces.bootstrap import (
            bootstrap_traces,
            dataset_hash,
            passes,
            program_hash,
        )
        from apprentice.traces.store import TraceStore, TraceStoreMismatch
        from apprentice.train.tracking import check_trackers

        job, cfg = self.job, self.job.bootstrap
        # before the teacher is paid
        self.student_loading().check(self.student_path())
        if self.student_loading().load_in_4bit and job.train.full_finetune:
            raise StageError(
                "student.load_in_4bit trains a LoRA adapter on a frozen 4-bit base, and "
                "train.full_finetune would update the 4-bit weights themselves: set one of "
                "them to false"
            )
        check_context(job.train, self.student_path(), job.tiny, self.student_loading())
        check_trackers(job.train)
        program = job.make_program()
        key = _hash(
            program_hash(program), dataset_hash(job.trainset), job.teacher_key, _section(cfg)
        )

        def run() -> dict[str, Any]:
            teacher = job.make_teacher(self.teacher_cache_dir())
            previous = self.state()["stages"].get("bootstrap", {}).get("summary", {})
            spent_before = previous.get("teacher_cost_usd_total", 0)
            try:
                result = bootstrap_traces(
                    program,
                    job.trainset,
                    teacher=teacher,
                    metric=job.metric,
                    store=self.traces_dir,
                    concurrency=cfg.concurrency,
                    attempts=cfg.attempts,
                    threshold=cfg.threshold,
                    progress=self.progress,
                    reset=job.reset_traces,
                    retry_failed=cfg.retry_failed,
                    max_cost_usd=getattr(cfg, "max_cost_usd", None),
                    spent_usd=spent_before,
                )
            except TraceStoreMismatch as exc:
                raise TraceStoreMismatch(f"{exc}. {job.hints.get('mismatch', '')}") from None
            summary = result.summary()
            usage = getattr(teacher, "usage", None)
            cost = (usage.summary().get("cost_usd") if usage else None) or 0.0
            total = round(spent_before + cost, 6)
            summary["teacher_cost_usd"] = summary["teacher_cost_usd_total"] = total
            # What the store holds now, over every run that filled it.
            stored = list(TraceStore(self.traces_dir))
            summary["traces"] = len(stored)
            summary["passing"] = sum(passes(t, cfg.threshold) for t in stored)
            summary["failed_traces"] = sum(not t.ok for t in stored)
            if result.stopped_at_cost:
                # Kept as the stage's summary (the spend so far counts toward the next run's
                # cap), and the run stops here: a dataset from part of the examples would
                # be trained on without anyone asking for that.
                self._record("bootstrap", summary=summary)
                raise StageError(
                    f"bootstrap stopped at the teacher cost cap: ${total:.4f} spent of "
                    f"bootstrap.max_cost_usd=${cfg.max_cost_usd:g}; {len(stored)} of "
                    f"{result.total} examples are traced (in {self.traces_dir}). Raise the "
                    "cap and run again to trace the rest; nothing traced is paid twice"
                )
            return summary

        # Always runs: the store skips traced examples, so a finished bootstrap costs nothing.
        return self._stage("bootstrap", key, run, exists=False)

    def dataset(self) -> StageOutcome:
        """Turns the passing traces into SFT rows (one Format renders prompts and rows)."""
        from apprentice.dataset.build import build_dataset
        from apprentice.traces.bootstrap import program_hash
        from apprentice.traces.store import TraceStore

        job = self.job
        self.require(self.traces_dir / "traces.jsonl", "bootstrap")
        program = job.make_program()
        store = TraceStore(self.traces_dir)
        threshold = job.bootstrap.threshold
        fmt = self.student_format()
        template = prompt_template(job.chat_template)
        key = _hash(
            store.content_hash(),
            program_hash(program),
            _section(job.dataset),
            threshold,
            fmt.name,
            template.chat_template,
            # What the rows-too-long count depends on (length_check).
            self.student_path(),
            _section(job.tiny),
            *_loading_key(self.student_loading(), hub_only=True),
            job.train.max_length,
            job.train.max_target_length,
        )

        def run() -> dict[str, Any]:
            try:
                manifest = build_dataset(
                    store,
                    program,
                    self.dataset_dir,
                    threshold=threshold,
                    multitask=job.dataset.multitask,
                    val_fraction=job.dataset.val_fraction,
                    format=fmt,
                    template=template,
                    lengths=length_check(
                        self.student_path(), job.tiny, job.train, self.student_loading()
                    ),
                )
            except ValueError as exc:
                boot = self.state()["stages"].get("bootstrap", {}).get("summary", {})
                if not boot.get("skipped") or "reused" not in job.hints:
                    raise
                raise ValueError(
                    f"{exc} ({boot['skipped']} of them were reused from an earlier run in "
                    f"{self.traces_dir}: {job.hints['reused']})"
                ) from None
            return {
                "counts": manifest.counts,
                "drops": manifest.drops,
                "hash": manifest.content_hash,
                "format": manifest.format,
                "too_long": too_long(manifest.lengths),
            }

        exists = (self.dataset_dir / "manifest.json").exists()
        return self._stage("dataset", key, run, exists=exists)

    def student_path(self) -> str:
        return self.job.student

    def student_loading(self):
        """How the student's base is loaded (``StudentLoading``; the defaults unless set)."""
        from apprentice.student_loading import StudentLoading

        return self.job.loading or StudentLoading()

    def student_format(self):
        """The format the student is trained and served with (``student_prompt``)."""
        return student_format(
            self.job.dataset.format, self.student_path(), self.job.tiny, self.student_loading()
        )

    def prompted_format(self):
        """The format of the students that are prompted, not trained (the untrained and
        few-shot baselines): the student's, except that a baked student's prompt leaves out
        the instructions and field descriptions its adapter learned, which a prompted model
        needs, so they get the chat format's full prompt."""
        from apprentice.formats import format_named

        fmt = self.student_format()
        return format_named("chat") if fmt.name == "baked" else fmt

    def trained_prompt(self):
        """(format, chat template and its variables) the dataset's rows were rendered with:
        what the adapters learned, read from the dataset's manifest."""
        from apprentice.dataset.build import read_dataset_manifest
        from apprentice.formats import format_named
        from apprentice.formats.prompt import PromptTemplate

        manifest = read_dataset_manifest(self.dataset_dir)
        return format_named(manifest.format), PromptTemplate.from_config(manifest.template)

    def ensure_student(self, dataset_hash: str) -> str:
        """The student's path; a tiny student is built from the training rows on first use."""
        tiny = self.job.tiny
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

    def train_key(self) -> str:
        from apprentice.dataset.build import read_dataset_manifest

        job = self.job
        manifest = read_dataset_manifest(self.dataset_dir)
        groups = adapter_groups(job.make_program(), job.dataset.multitask)
        student = {"model": job.student, "tiny": _section(job.tiny)}
        if self.student_loading().changed():  # the defaults add no key (older runs)
            student["loading"] = self.student_loading().changed()
        return _hash(
            manifest.content_hash, student, _section(job.lora), _section(job.train), groups
        )

    def train(self) -> StageOutcome:
        """One adapter per group of predictors (LoRA or full), each resumable."""
        from apprentice.dataset.build import read_dataset_manifest
        from apprentice.train import sft

        job = self.job
        self.require(self.dataset_dir / "manifest.json", "dataset")
        manifest = read_dataset_manifest(self.dataset_dir)
        groups = adapter_groups(job.make_program(), job.dataset.multitask)
        key = self.train_key()
        outs = self.adapter_dirs()
        finished = all((d / "adapter" / "manifest.json").exists() for d in outs.values())

        def run() -> dict[str, Any]:
            student = self.ensure_student(manifest.content_hash)
            summary = {}
            for name, group in groups.items():
                # The trainer reuses a finished adapter or resumes a checkpoint of this same
                # training run, and sets aside another run's (train/resume.py).
                result = sft.train_adapter(
                    self.dataset_dir,
                    student,
                    outs[name],
                    lora=job.lora,
                    train=job.train,
                    predictors=group,
                    name=name,
                    progress=self.progress,
                    loading=self.student_loading(),
                )
                keep = ("steps", "final_train_loss", "final_val_loss", "elapsed_s")
                summary[name] = {k: result.metrics.get(k) for k in keep} | {
                    "method": result.manifest.method,
                    "servable": result.manifest.servable,
                    "metrics": result.metrics,
                }
            return summary

        return self._stage("train", key, run, exists=finished)

    def bind(self) -> StageOutcome:
        """Writes program.json: the program with each predictor bound to the student and its
        adapter on the serving backend. Cheap; re-run whenever training or serving changed."""
        from apprentice.serve.binding import bind_student

        job = self.job
        outs = self.adapter_dirs()
        for out in outs.values():
            self.require(out / "adapter" / "manifest.json", "train")
        train_entry = self.state()["stages"].get("train")
        key = _hash(
            train_entry, _section(job.serve), job.lm_options, *_loading_key(self.student_loading())
        )

        def run() -> dict[str, Any]:
            program = job.make_program()
            groups = adapter_groups(program, job.dataset.multitask)
            fmt, template = self.trained_prompt()
            compiled = bind_student(
                program,
                groups,
                {name: out / "adapter" for name, out in outs.items()},
                self.student_path(),
                job.serve,
                lm_options=job.lm_options,
                format=fmt,
                template=template,
                loading=self.student_loading(),
            )
            compiled.save(self.program_file)
            self._compiled = compiled
            return {"backend": job.serve.backend, "program": str(self.program_file)}

        self._compiled = None
        outcome = self._stage("bind", key, run, exists=self.program_file.exists())
        return outcome

    def compiled_program(self):
        """The bound program: the one bind just made, else program.json loaded again."""
        if getattr(self, "_compiled", None) is not None:
            return self._compiled
        self.require(self.program_file, "bind")
        # trusted: written by this run, whose program already runs code of its choosing
        return self.job.make_program().load(self.program_file, trusted=True)
