"""Files and folders: what names a local path, and writing into folders that other
processes may share (atomic writes, set-aside, locks).

Low in the layers (imports nothing from apprentice). The run directory, the trace store
and saved programs all write through here, so each rule lives in one place:

- ``looks_like_local_path``: whether a model name means a file or folder on this machine
  rather than a hub id (every loader and server asks it the same way).
- ``atomic_write``: a reader sees the old file or the new one, never half of one; the
  temporary file has a unique name, so two writers never share (and clobber) it.
- ``set_aside``: moves a file or folder out of the way under a name that is free, so an
  older set-aside copy is never overwritten or deleted.
- ``exclusive``: one process at a time in a folder (an OS file lock, released when the
  process dies); a second one is refused at once with a message saying who to wait for.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "DirectoryBusy",
    "acquire",
    "atomic_write",
    "exclusive",
    "folder_lock",
    "free_path",
    "looks_like_local_path",
    "set_aside",
]

LOCK_NAME = ".apprentice.lock"


class DirectoryBusy(RuntimeError):
    """Another process holds the folder's lock."""


def looks_like_local_path(name: str | os.PathLike) -> bool:
    """Whether ``name`` means a file or folder on this machine rather than a Hugging Face
    Hub id: it exists, or it can only be a path (absolute, starting with ``.`` or ``~``,
    or with more than one ``/``, where a hub id is ``name`` or ``org/name``). A path that
    looks local but does not exist is then an error for the caller, never a download."""
    text = str(name)
    if text.startswith((".", "~")) or text.count("/") > 1:
        return True
    path = Path(text).expanduser()
    return path.is_absolute() or path.exists()


def atomic_write(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` to ``path`` through a uniquely named temporary file beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def free_path(folder: Path, stem: str, suffix: str = "") -> Path:
    """``folder/stem+suffix``, else ``stem-2``, ``stem-3``, ...: the first that does not exist."""
    candidate = folder / f"{stem}{suffix}"
    n = 2
    while candidate.exists():
        candidate = folder / f"{stem}-{n}{suffix}"
        n += 1
    return candidate


def set_aside(path: Path, folder: Path) -> Path:
    """Moves ``path`` into ``folder`` as ``<stem>.<time stamp><suffix>`` under a free name
    (nothing there is ever replaced or deleted); returns where it went."""
    folder.mkdir(parents=True, exist_ok=True)
    stem, suffix = (path.name, "") if path.is_dir() else (path.stem, path.suffix)
    target = free_path(folder, f"{stem}.{time.strftime('%Y%m%d-%H%M%S')}", suffix)
    os.replace(path, target)
    return target


def folder_lock(folder: Path):
    """The lock of ``folder`` (``.apprentice.lock`` inside it), not yet held."""
    from filelock import FileLock

    folder.mkdir(parents=True, exist_ok=True)
    # thread_local=False: held by the process, whichever thread releases it.
    return FileLock(folder / LOCK_NAME, thread_local=False)


def acquire(lock, what: str) -> None:
    """Takes ``lock`` now (re-entrant within one process) or raises ``DirectoryBusy``."""
    from filelock import Timeout

    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise DirectoryBusy(
            f"{what} is in use by another apprentice process (it holds {lock.lock_file}); "
            "wait for that process to finish, or use another directory"
        ) from None


@contextlib.contextmanager
def exclusive(lock, what: str) -> Iterator[None]:
    """Holds ``lock`` for the block, or raises ``DirectoryBusy`` at once."""
    acquire(lock, what)
    try:
        yield
    finally:
        lock.release()
