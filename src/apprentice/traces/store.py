"""The trace store: an append-only JSONL file of Traces plus a manifest.

Crash safety: traces are written in small batches (``flush_every`` traces or
``flush_interval`` seconds, whichever comes first), each batch in one ``write`` followed
by ``fsync``. A process killed mid-write leaves at most a torn last line, which the
next open cuts off; the examples of a lost batch have no trace and simply run again
(their LM calls are answered by the LM cache). Readers stream line by line; a line
that is not a trace (hand-edited, another tool's) is skipped with a warning, so its
example simply runs again.

One writer at a time: ``open`` takes the folder's lock (``files.exclusive``), and a
second writer is refused at once rather than interleaving with the first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from apprentice.files import acquire, atomic_write, folder_lock, set_aside
from apprentice.traces.capture import Trace, why_not_a_trace

__all__ = ["StoreManifest", "TraceStore", "TraceStoreMismatch"]

log = logging.getLogger(__name__)

SCHEMA = "apprentice.traces"
VERSION = 2  # 2: the metric and the code of the program, teacher and metric are recorded
_IDENTITY = ("program_hash", "dataset_hash", "teacher", "metric")
_RESET_HINT = "use a new store directory, or reset=True to move the old traces aside"


class TraceStoreMismatch(ValueError):
    """A store that was started for a different program, teacher, dataset or metric."""


@dataclass
class StoreManifest:
    """What made the traces: a store is resumed only by the same program (predictors and
    code), teacher (``BaseLM.trace_identity``), dataset and metric (its code hash)."""

    program_hash: str
    teacher: dict[str, Any]
    dataset_hash: str
    metric: str | None = None
    schema: str = SCHEMA
    version: int = VERSION
    created: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _line(trace: Trace) -> bytes:
    return (json.dumps(trace.to_dict(), ensure_ascii=False) + "\n").encode()


def _failed_instead(trace: Trace, exc: UnicodeEncodeError) -> Trace:
    bad = exc.object[exc.start : exc.end]
    log.warning(
        "trace of example %s holds %r (not valid Unicode); stored as failed", trace.example_id, bad
    )
    failed = Trace(
        example_id=trace.example_id,
        inputs=trace.inputs,
        error=f"the run's text holds {bad!r}, which is not valid Unicode (a lone surrogate, "
        "from the teacher's reply or a script) and cannot be stored; the example failed",
        attempt=trace.attempt,
        latency_s=trace.latency_s,
        example=trace.example,
    )
    try:
        _line(failed)
    except UnicodeEncodeError:  # the example's own data holds it: keep only the id
        failed.inputs, failed.example = {}, None
    return failed


class TraceStore:
    """``TraceStore(run_dir / "traces")`` holds ``traces.jsonl`` and ``manifest.json``."""

    def __init__(
        self, path: str | os.PathLike, *, flush_every: int = 16, flush_interval: float = 0.5
    ) -> None:
        self.path = Path(path)
        self.file = self.path / "traces.jsonl"
        self.manifest_file = self.path / "manifest.json"
        self.flush_every = flush_every
        self.flush_interval = flush_interval
        self._lock = threading.Lock()
        self._buffer: list[bytes] = []
        self._last_flush = time.monotonic()
        self._handle = None
        self._folder_lock = None  # taken by open(), released by close()

    # -- manifest ------------------------------------------------------------------------
    def manifest(self) -> StoreManifest | None:
        if not self.manifest_file.exists():
            return None
        where = self.manifest_file
        try:
            data = json.loads(where.read_text())
        except ValueError as exc:
            raise TraceStoreMismatch(f"{where} is not valid JSON ({exc}); {_RESET_HINT}") from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise TraceStoreMismatch(f"{where} is not a trace store manifest; {_RESET_HINT}")
        if data.get("version", 0) > VERSION:
            raise TraceStoreMismatch(
                f"{where} has version {data['version']}; this apprentice reads up to {VERSION}"
            )
        known = {f.name for f in fields(StoreManifest)}
        unknown = sorted(set(data) - known)
        missing = sorted({"program_hash", "teacher", "dataset_hash"} - set(data))
        if unknown or missing:
            what = f"unknown key(s) {unknown}" if unknown else f"no key(s) {missing}"
            raise TraceStoreMismatch(
                f"{where} has {what}: it was edited or written by another tool; {_RESET_HINT}"
            )
        return StoreManifest(**data)

    def open(
        self, manifest: StoreManifest, *, reset: bool = False, grown: bool = False
    ) -> set[str]:
        """Starts or resumes the store for ``manifest``; returns the ids already done.

        Resuming a store made for another program, teacher, dataset or metric, or traces
        without a manifest that says whose they are, is refused unless ``reset=True``, which
        moves the old traces and manifest aside (``traces.<time>.jsonl``; never deleted or
        overwritten). ``grown=True`` (the caller checked that every stored trace is of an
        unchanged example of the new dataset) accepts another dataset and records it. One
        process at a time writes a store: a second ``open`` elsewhere raises
        ``DirectoryBusy`` until this one is closed.
        """
        if self._handle is not None:
            raise RuntimeError(f"trace store {self.path} is already open")
        self.path.mkdir(parents=True, exist_ok=True)
        if self._folder_lock is None:
            self._folder_lock = folder_lock(self.path)
        acquire(self._folder_lock, f"trace store {self.path}")
        try:
            done = self._start(manifest, reset, grown)
            self._handle = open(self.file, "ab")  # noqa: SIM115 - closed in close()
        except BaseException:
            self._folder_lock.release()
            raise
        return done

    def _start(self, manifest: StoreManifest, reset: bool, grown: bool = False) -> set[str]:
        if reset:
            for path in (self.file, self.manifest_file):
                if path.exists():
                    log.warning("moved old %s to %s", path.name, set_aside(path, self.path))
            existing = None
        else:
            existing = self.manifest()
        if existing is None and not reset and self.file.exists() and self.file.stat().st_size:
            raise TraceStoreMismatch(
                f"{self.file} holds traces but there is no manifest.json to say which program, "
                f"teacher and dataset made them; {_RESET_HINT}"
            )
        if existing is not None:
            for name in _IDENTITY:
                if grown and name == "dataset_hash":
                    continue
                if getattr(existing, name) != getattr(manifest, name):
                    older = (
                        f" (made by an older apprentice, store version {existing.version}, "
                        "which did not record the metric or the code)"
                        if existing.version < VERSION
                        else ""
                    )
                    raise TraceStoreMismatch(
                        f"{self.path} holds traces for a different {name.replace('_hash', '')} "
                        f"({getattr(existing, name)!r}, now {getattr(manifest, name)!r}){older}; "
                        "use a new store directory, or reset=True to move the old traces aside"
                    )
            if grown and existing.dataset_hash != manifest.dataset_hash:
                manifest.created = existing.created
                atomic_write(self.manifest_file, json.dumps(manifest.to_dict(), indent=2))
        else:
            manifest.created = manifest.created or time.time()
            atomic_write(self.manifest_file, json.dumps(manifest.to_dict(), indent=2))
        self.repair()
        return set(self._ids())

    def repair(self) -> int:
        """Cuts a torn last line left by a crash; returns the bytes removed."""
        if not self.file.exists():
            return 0
        size = self.file.stat().st_size
        if size == 0:
            return 0
        with open(self.file, "rb+") as f:
            back = min(size, 1 << 20)
            while True:
                f.seek(size - back)
                tail = f.read(back)
                cut = tail.rfind(b"\n")
                if cut != -1 or back == size:
                    break
                back = min(size, back * 2)
            keep = size - back + cut + 1 if cut != -1 else 0
            if keep < size:
                f.truncate(keep)
                log.warning(
                    "%s: cut a torn last line (%d bytes) left by a crash", self.file, size - keep
                )
            return size - keep

    # -- writing ---------------------------------------------------------------------------
    def append(self, trace: Trace) -> Trace:
        """Buffers ``trace`` (flushed in batches); returns what was stored: ``trace``, or,
        when it holds text that UTF-8 cannot encode (a lone surrogate from a reply or a
        script), a failed trace of the same example that says so, so that example fails
        alone and the run goes on."""
        try:
            line = _line(trace)
        except UnicodeEncodeError as exc:
            trace = _failed_instead(trace, exc)
            line = _line(trace)
        with self._lock:
            self._buffer.append(line)
            due = (
                len(self._buffer) >= self.flush_every
                or time.monotonic() - self._last_flush >= self.flush_interval
            )
        if due:
            self.flush()
        return trace

    def flush(self) -> None:
        if self._handle is None:
            raise RuntimeError(f"trace store {self.path} is not open: call open() first")
        self._flush_to(self._handle)

    def _flush_to(self, handle) -> None:
        with self._lock:
            if not self._buffer:
                return
            handle.write(b"".join(self._buffer))
            handle.flush()
            self._buffer.clear()
            self._last_flush = time.monotonic()
            os.fsync(handle.fileno())

    def close(self) -> None:
        """Writes what is buffered and releases the folder. A failed write (a full disk)
        is raised, but the file is closed and the folder released all the same: the lost
        batch's examples have no trace and run again next time."""
        if self._handle is None:
            return
        handle, self._handle = self._handle, None
        try:
            try:
                self._flush_to(handle)
            finally:
                self._buffer.clear()
                handle.close()  # retries the buffered bytes, so it may raise ENOSPC again
        finally:
            self._folder_lock.release()

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading (streaming) -------------------------------------------------------------------
    def _lines(self, warn: bool = True) -> Iterator[tuple[int, dict[str, Any]]]:
        if not self.file.exists():
            return
        with open(self.file, "rb") as f:
            for number, raw in enumerate(f, 1):
                if not raw.endswith(b"\n"):
                    return  # torn tail of a crashed writer: not a trace yet
                try:
                    data = json.loads(raw)
                except ValueError:
                    if warn:
                        log.warning("%s line %d is not valid JSON; skipped", self.file, number)
                    continue
                problem = why_not_a_trace(data)
                if problem is None:
                    yield number, data
                elif warn:
                    log.warning(
                        "%s line %d is not a trace (%s); skipped", self.file, number, problem
                    )

    def _ids(self) -> Iterator[str]:
        for _, data in self._lines():
            yield data["example_id"]

    def __iter__(self) -> Iterator[Trace]:
        """Each example's latest trace, in file order, streamed."""
        last: dict[str, int] = {}
        for number, data in self._lines():
            last[data["example_id"]] = number
        # Second pass: only the line numbers remembered above, so memory holds ids, not traces.
        for number, data in self._lines(warn=False):
            if last.get(data["example_id"]) == number:
                yield Trace.from_dict(data)

    def __len__(self) -> int:
        return len({i for i in self._ids()})

    def content_hash(self) -> str:
        digest = hashlib.sha256()
        if self.file.exists():
            with open(self.file, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()
