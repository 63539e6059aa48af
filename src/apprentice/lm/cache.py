"""An on-disk cache of LM responses in SQLite: safe across threads and processes.

The key is a hash of the whole request plus the LM's identity (backend, model,
adapter name and adapter content hash), so swapping an adapter never returns a stale
answer. SQLite is used directly (stdlib, WAL journal) rather than a wrapper library:
one indexed SELECT/INSERT per call keeps the per-call overhead in the tens of
microseconds, which the overhead benchmark (scripts/bench_overhead.py) holds us to.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

__all__ = ["Cache", "default_cache_path", "resolve_cache"]


def default_cache_path() -> Path:
    root = os.environ.get("APPRENTICE_CACHE_DIR") or Path.home() / ".cache" / "apprentice"
    return Path(root) / "lm_cache.sqlite"


class Cache:
    """Key -> JSON value store. Counts hits and misses; ``enabled = False`` switches it off."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.enabled = True
        self.hits = 0
        self.misses = 0
        self._count_lock = threading.Lock()
        self._local = threading.local()
        self._connect()  # create the table now, so a bad path fails here and not mid-run

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a power cut may drop the newest entries, never corrupt the file;
            # losing a cache entry only costs one repeated call.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            self._local.conn = conn
        return conn

    def get(self, key: str) -> dict[str, Any] | None:
        if not self.enabled:
            return None
        row = (
            self._connect().execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        )
        with self._count_lock:
            if row is None:
                self.misses += 1
            else:
                self.hits += 1
        return None if row is None else json.loads(row[0])

    def put(self, key: str, value: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._connect().execute(
            "INSERT OR REPLACE INTO responses (key, value) VALUES (?, ?)", (key, json.dumps(value))
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


_shared: dict[Path, Cache] = {}
_shared_lock = threading.Lock()


def resolve_cache(cache: bool | str | os.PathLike | Cache | None) -> Cache | None:
    """``True``: the default on-disk cache (``APPRENTICE_CACHE_DIR``; ``APPRENTICE_CACHE=0``
    turns it off); a path: a cache there; ``False``/``None``: no cache."""
    if isinstance(cache, Cache):
        return cache
    if cache is None or cache is False:
        return None
    if cache is True:
        if os.environ.get("APPRENTICE_CACHE", "1").lower() in ("0", "false", "off", "no"):
            return None
        path = default_cache_path()
    else:
        path = Path(cache)
    with _shared_lock:
        # One Cache object per file in a process, so hit/miss counts add up.
        key = path.resolve()
        if key not in _shared:
            _shared[key] = Cache(path)
        return _shared[key]
