"""An adapter directory read once: the bytes that get loaded are the bytes that get hashed.

``read_adapter(path, root=...)`` opens the directory and each file, checks where each open
file really is (not where its path pointed when it was checked), reads the files into
memory and hashes what it read. Loading then works from those bytes (``stage`` writes them
into a private directory for peft or vLLM), so a folder swapped for a symlink after the
check cannot make the server load, or report, weights other than the ones it checked.

The files and the hash are those of ``apprentice.adapter.adapter_hash``, so both give the
same identity for the same directory.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from apprentice.adapter import CONFIG, is_adapter_file

__all__ = ["AdapterFiles", "OutsideRootError", "is_adapter_file", "read_adapter"]


class OutsideRootError(ValueError):
    """The adapter, or a file in it, lies outside the directory adapters may be loaded from."""


@dataclass(frozen=True)
class AdapterFiles:
    """The files of one adapter directory as read (name -> bytes), where they really were,
    and their content hash."""

    path: Path
    files: dict[str, bytes]
    hash: str

    def stage(self, folder: str | os.PathLike) -> Path:
        """Writes the files into ``folder`` (created, private to this user); returns it."""
        folder = Path(folder)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name, data in self.files.items():
            fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(data)
        return folder


def read_adapter(path: str | os.PathLike, *, root: Path | None = None) -> AdapterFiles:
    """Reads the PEFT adapter directory ``path`` (relative paths start at ``root``, when
    given). With a ``root``, the directory and every file read must really lie inside it.
    Raises FileNotFoundError (nothing there, no adapter_config.json), OutsideRootError,
    or ValueError (a path the system cannot use)."""
    shown = str(path)
    try:
        folder = Path(path).expanduser()
        if root is not None:
            folder = root / folder  # an absolute path stays itself
            # Refused before anything is opened, so a client cannot probe what exists outside.
            if not folder.resolve().is_relative_to(root):
                raise OutsideRootError(_outside(shown))
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(_missing(shown, "does not exist or is not a directory")) from None
    except (OSError, ValueError, RuntimeError) as exc:  # a NUL byte, a symlink loop, ...
        if isinstance(exc, OutsideRootError):
            raise
        raise ValueError(f"adapter path {shown!r} is not a usable path: {exc}") from None
    try:
        real = _check_inside(dir_fd, root, shown)
        names = sorted(n for n in os.listdir(dir_fd) if is_adapter_file(n))
        if CONFIG not in names:
            raise FileNotFoundError(_missing(shown, f"has no {CONFIG}"))
        files = {name: _read(name, dir_fd, root, shown) for name in names}
    finally:
        os.close(dir_fd)
    digest = hashlib.sha256()
    for name, data in files.items():
        digest.update(name.encode())
        digest.update(data)
    return AdapterFiles(real, files, digest.hexdigest()[:16])


def _read(name: str, dir_fd: int, root: Path | None, shown: str) -> bytes:
    try:
        # Non-blocking: opening a FIFO for reading would otherwise wait for a writer forever.
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as exc:  # a dangling link, no permission
        raise ValueError(f"adapter {shown!r}: cannot open {name}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO, a device, a socket
            raise ValueError(f"adapter {shown!r}: {name} is not a regular file")
        os.set_blocking(fd, True)
        _check_inside(fd, root, f"{shown}/{name}")
        return file.read()


def _check_inside(fd: int, root: Path | None, shown: str) -> Path:
    """Where the open ``fd`` really is; refused unless inside ``root`` (when given)."""
    real = _real_path(fd)
    if root is not None and not real.is_relative_to(root):
        raise OutsideRootError(_outside(shown))
    return real


def _real_path(fd: int) -> Path:
    """The path of the file an open descriptor refers to, whatever path opened it."""
    if sys.platform.startswith("linux"):
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    if sys.platform == "darwin":
        import fcntl

        return Path(os.fsdecode(fcntl.fcntl(fd, fcntl.F_GETPATH, bytes(1024)).rstrip(b"\0")))
    raise OSError(f"cannot tell where an open file lies on {sys.platform}")


def _outside(shown: str) -> str:
    return (
        f"{shown!r} leads outside the adapter root (symlinks followed): only adapters under "
        "the root can be loaded"
    )


def _missing(shown: str, what: str) -> str:
    return (
        f"adapter path {shown!r} {what}; pass a PEFT adapter directory "
        f"({CONFIG} + adapter_model.safetensors)"
    )
