"""The trace store: an append-only JSONL file of Traces plus a manifest.

Crash safety: traces are written in small batches (``flush_every`` traces or
``flush_interval`` seconds, whichever comes first), each batch in one ``write`` followed
by ``fsync``. A process killed mid-write leaves at most a torn last line, which the
next open cuts off; the examples of a lost batch have no trace and simply run again
(their LM calls are answered by the LM cache). Readers stream line by line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from apprentice.traces.capture import Trace

__all__ = ["StoreManifest", "TraceStore", "TraceStoreMismatch"]

log = logging.getLogger(__name__)

SCHEMA = "apprentice.traces"
VERSION = 1


class TraceStoreMismatch(ValueError):
    """A store that was started for a different program, teacher or dataset."""


@dataclass
class StoreManifest:
    program_hash: str
    teacher: dict[str, Any]
    dataset_hash: str
    schema: str = SCHEMA
    version: int = VERSION
    created: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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

    # -- manifest ------------------------------------------------------------------------
    def manifest(self) -> StoreManifest | None:
        if not self.manifest_file.exists():
            return None
        data = json.loads(self.manifest_file.read_text())
        if data.get("schema") != SCHEMA:
            raise TraceStoreMismatch(f"{self.manifest_file} is not a trace store manifest")
        if data.get("version", 0) > VERSION:
            raise TraceStoreMismatch(
                f"{self.manifest_file} has version {data['version']}; this apprentice reads up to {VERSION}"
            )
        return StoreManifest(**data)

    def open(self, manifest: StoreManifest, *, reset: bool = False) -> set[str]:
        """Starts or resumes the store for ``manifest``; returns the ids already done.

        Resuming a store made for another program, teacher or dataset is refused unless
        ``reset=True``, which moves the old traces aside (they are never deleted).
        """
        self.path.mkdir(parents=True, exist_ok=True)
        existing = self.manifest()
        if existing is not None and not reset:
            for name in ("program_hash", "dataset_hash", "teacher"):
                if getattr(existing, name) != getattr(manifest, name):
                    raise TraceStoreMismatch(
                        f"{self.path} holds traces for a different {name.replace('_hash', '')} "
                        f"({getattr(existing, name)!r}, now {getattr(manifest, name)!r}); use a new "
                        "store directory, or reset=True to move the old traces aside"
                    )
        if existing is not None and reset and self.file.exists():
            aside = self.file.with_name(f"traces.{int(time.time())}.jsonl")
            os.replace(self.file, aside)
            log.warning("moved old traces to %s", aside)
        if existing is None or reset:
            manifest.created = manifest.created or time.time()
            tmp = self.manifest_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(manifest.to_dict(), indent=2))
            os.replace(tmp, self.manifest_file)
        self.repair()
        done = {t for t in self._ids()}
        self._handle = open(self.file, "ab")  # noqa: SIM115 - closed in close()
        return done

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
    def append(self, trace: Trace) -> None:
        line = (json.dumps(trace.to_dict(), ensure_ascii=False) + "\n").encode()
        with self._lock:
            self._buffer.append(line)
            due = (
                len(self._buffer) >= self.flush_every
                or time.monotonic() - self._last_flush >= self.flush_interval
            )
        if due:
            self.flush()

    def flush(self) -> None:
        if self._handle is None:
            raise RuntimeError(f"trace store {self.path} is not open: call open() first")
        with self._lock:
            if not self._buffer:
                return
            self._handle.write(b"".join(self._buffer))
            self._handle.flush()
            self._buffer.clear()
            self._last_flush = time.monotonic()
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self.flush()
            self._handle.close()
            self._handle = None

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading (streaming) -------------------------------------------------------------------
    def _lines(self) -> Iterator[tuple[int, dict[str, Any]]]:
        if not self.file.exists():
            return
        with open(self.file, "rb") as f:
            for number, raw in enumerate(f, 1):
                if not raw.endswith(b"\n"):
                    return  # torn tail of a crashed writer: not a trace yet
                try:
                    yield number, json.loads(raw)
                except ValueError:
                    log.warning("%s line %d is not valid JSON; skipped", self.file, number)

    def _ids(self) -> Iterator[str]:
        for _, data in self._lines():
            yield data["example_id"]

    def __iter__(self) -> Iterator[Trace]:
        """Each example's latest trace, in file order, streamed."""
        last: dict[str, int] = {}
        for number, data in self._lines():
            last[data["example_id"]] = number
        # Second pass: only the line numbers remembered above, so memory holds ids, not traces.
        for number, data in self._lines():
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
