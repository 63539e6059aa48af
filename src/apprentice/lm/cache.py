"""An on-disk cache of LM responses in SQLite: safe across threads and processes.

The key is a hash of the whole request plus the LM's identity (backend, model,
adapter name and adapter content hash), so swapping an adapter never returns a stale
answer. SQLite is used directly (stdlib, WAL journal) rather than a wrapper library:
one indexed SELECT/INSERT per call keeps the per-call overhead in the tens of
microseconds, which the overhead benchmark (scripts/bench_overhead.py) holds us to.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["Cache", "CacheFileError", "cache_config", "default_cache_path", "resolve_cache"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


def default_cache_path() -> Path:
    root = os.environ.get("APPRENTICE_CACHE_DIR") or Path.home() / ".cache" / "apprentice"
    return Path(root) / "lm_cache.sqlite"


class CacheFileError(OSError):
    """A cache file that is not an LM cache this version can use."""


class Cache:
    """Key -> JSON value store. Counts hits and misses; ``enabled = False`` switches it off."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.enabled = True
        self.hits = 0
        self.misses = 0
        self._count_lock = threading.Lock()
        self._local = threading.local()
        _open_caches.add(self)
        # Create the table now, so a bad path fails here and not mid-run.
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._connect()
        except CacheFileError:
            raise
        except (OSError, sqlite3.Error) as exc:
            raise OSError(
                f"cannot open the LM cache at {str(self.path)!r}: {exc}; point "
                "APPRENTICE_CACHE_DIR elsewhere, or pass cache=False to turn it off"
            ) from exc

    def _connect(self) -> sqlite3.Connection:
        # One connection per thread (sqlite3 connections must not be shared between
        # threads) and per process (nor carried across fork: see _after_fork).
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            _switch_to_wal(conn)
            # NORMAL: a power cut may drop the newest entries, never corrupt the file;
            # losing a cache entry only costs one repeated call.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            columns = [row[1] for row in conn.execute("PRAGMA table_info(responses)")]
            if not {"key", "value"} <= set(columns):
                conn.close()
                raise CacheFileError(
                    f"{self.path} has a 'responses' table with columns {columns}, not the LM "
                    "cache's (key, value): it is another program's database or another "
                    "version's cache. Move the file away (a new cache is made in its place), "
                    "point APPRENTICE_CACHE_DIR elsewhere, or pass cache=False"
                )
            self._local.conn = conn
        return conn

    def _after_fork(self) -> None:
        # A forked child must not use its parent's SQLite connections (the SQLite docs
        # forbid it: locks and the WAL index would be shared by two processes as one).
        # Keep them unclosed (closing would touch the files the parent is using); the
        # child opens its own on first use. The lock may have been held by a thread
        # that did not survive the fork.
        _inherited.append(self._local)
        self._local = threading.local()
        self._count_lock = threading.Lock()

    def get(self, key: str, read: Callable[[Any], T] | None = None) -> T | Any | None:
        """The value stored under ``key``, passed through ``read`` when given, or None.
        A row that is not JSON, or that ``read`` refuses with a ValueError, is a miss
        (logged): the caller asks again and its ``put`` overwrites the row."""
        if not self.enabled:
            return None
        row = (
            self._connect().execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        )
        value = None
        if row is not None:
            try:
                value = json.loads(row[0])
                if read is not None:
                    value = read(value)
            except ValueError as exc:
                why = f"not JSON ({exc})" if isinstance(exc, json.JSONDecodeError) else str(exc)
                logger.warning(
                    "LM cache %s: ignoring the unreadable entry %s (%s); asking again, "
                    "and the answer will replace it",
                    self.path,
                    key[:16],
                    why,
                )
                value = None
        with self._count_lock:
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
        return value

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Stores ``value``; one that is not valid Unicode (a lone surrogate) is not stored,
        so a reply that no trace can hold is not served again on every later run."""
        if not self.enabled:
            return
        # Not ASCII-escaped: SQLite's UTF-8 encoding then refuses what no file can hold.
        text = json.dumps(value, ensure_ascii=False)
        try:
            self._connect().execute(
                "INSERT OR REPLACE INTO responses (key, value) VALUES (?, ?)", (key, text)
            )
        except UnicodeEncodeError as exc:
            logger.warning(
                "LM cache %s: not caching the reply for %s: it holds %r, which is not valid "
                "Unicode (%s)",
                self.path,
                key[:16],
                exc.object[exc.start : exc.end],
                exc.reason,
            )

    def __len__(self) -> int:
        return self._connect().execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def clear(self) -> None:
        self._connect().execute("DELETE FROM responses")
        with self._count_lock:
            self.hits = self.misses = 0

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "entries": len(self)}

    def __repr__(self) -> str:
        return f"Cache({str(self.path)!r}, hits={self.hits}, misses={self.misses})"


_open_caches: weakref.WeakSet[Cache] = weakref.WeakSet()
_inherited: list[threading.local] = []  # a forked child's copies of its parent's connections
_shared: dict[Path, Cache] = {}
_shared_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _shared_lock
    _shared_lock = threading.Lock()
    for cache in list(_open_caches):
        cache._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def cache_config(cache: Cache | None) -> bool | str:
    """How an LM's ``to_config`` saves its cache: ``True`` for the default cache (wherever
    ``APPRENTICE_CACHE_DIR`` puts it when loaded), the file's path for any other, ``False``
    for none."""
    if cache is None:
        return False
    if cache.path.resolve() == default_cache_path().resolve():
        return True
    return str(cache.path)


def cache_disabled_by_env() -> bool:
    return os.environ.get("APPRENTICE_CACHE", "1").strip().lower() in ("0", "false", "off", "no")


def resolve_cache(cache: bool | str | os.PathLike | Cache | None) -> Cache | None:
    """``True``: the default on-disk cache (in ``APPRENTICE_CACHE_DIR``); a path: a cache
    in that file; a ``Cache``: that cache; ``False``/``None``: no cache.
    ``APPRENTICE_CACHE=0`` turns off the first two (a ``Cache`` object has ``enabled``)."""
    if isinstance(cache, Cache):
        return cache
    if cache is None or cache is False:
        return None
    if cache is not True and not isinstance(cache, (str, os.PathLike)):
        raise TypeError(
            f"cache must be True, False, a file path or a Cache, got {type(cache).__name__} "
            f"{cache!r}"
        )
    if cache_disabled_by_env():
        return None
    path = default_cache_path() if cache is True else Path(cache)
    with _shared_lock:
        # One Cache object per file in a process, so hit/miss counts add up.
        key = path.resolve()
        if key not in _shared:
            _shared[key] = Cache(path)
        return _shared[key]


def _switch_to_wal(conn: sqlite3.Connection, wait_s: float = 30.0) -> None:
    """``PRAGMA journal_mode=WAL`` retried while another process holds the new file's lock.

    Two processes opening a fresh cache file at once race here: switching the journal
    mode takes an exclusive lock, and SQLite answers "database is locked" at once instead
    of waiting in its busy handler (seen in CI with two writer processes on a loaded box).
    """
    deadline = time.monotonic() + wait_s
    delay = 0.01
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
