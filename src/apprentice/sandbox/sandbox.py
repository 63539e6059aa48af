"""Sandbox: run untrusted Python (code a model wrote) with no way out.

Each run is a fresh interpreter in new network, pid, mount, ipc and uts namespaces. It sees
a read-only Python and /usr, a few device nodes and an empty size-limited /tmp (its working
folder), nothing else: no /etc, /home, /root, no repository, no host /tmp. It runs as an
unprivileged uid (65534 when the caller is root: root would not be held to RLIMIT_NPROC),
with no_new_privs, an empty environment and kernel limits on CPU time, memory, file size,
open files and processes (none: every fork fails), no capabilities (the bounding set
empty too) and a seccomp filter that refuses new namespaces and mounts
(``syscall_filter.py``). The code goes in on stdin, so no other process sees it in its
command line. The parent enforces the wall clock and the output size, and names the limit
that stopped a program.

Two backends build the same box: bubblewrap (``bwrap``) when installed, else, as root,
``launch_ns.py`` with the namespaces set up by hand. Where neither can run, ``run`` raises
``SandboxUnavailableError`` saying what to install: code is never run unsandboxed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from apprentice.sandbox.child import EXIT_ERROR, EXIT_LIMIT
from apprentice.sandbox.commands import bwrap_argv, child_argv, interpreter, namespaces_argv
from apprentice.sandbox.syscall_filter import filter_bytes

__all__ = [
    "LIMITS",
    "Sandbox",
    "SandboxError",
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailableError",
]

log = logging.getLogger(__name__)

EXIT_SETUP = 90  # launch_ns.py: the box could not be built
_SETUP_PREFIXES = ("bwrap:", "setpriv:", "sandbox setup:")
_LIMIT_OF_EXIT = {code: name for name, code in EXIT_LIMIT.items()}
_LIMIT_OF_SIGNAL = {signal.SIGXCPU: "cpu_time", signal.SIGXFSZ: "disk"}
#: Every limit a run can report, with what it means.
LIMITS = {
    "wall_time": "ran longer than the wall-clock limit",
    "cpu_time": "used more CPU time than allowed",
    "memory": "asked for more memory than allowed",
    "output": "printed more than the output limit",
    "processes": "tried to start a process or thread (none are allowed)",
    "network": "tried to use the network (there is none)",
    "filesystem": "touched a file outside its working folder /tmp",
    "disk": "wrote more than the working folder holds",
}
_INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`; Fedora: `dnf install "
    "bubblewrap`), or run as root on Linux so apprentice can build the namespaces itself"
)


class SandboxUnavailableError(RuntimeError):
    """No sandbox can be built on this machine; the code was not run."""


class SandboxError(RuntimeError):
    """The sandbox failed to start for a run (not the program's fault)."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-run limits. CPU time and wall time in seconds; sizes in bytes."""

    cpu_s: int = 5
    wall_s: float = 20.0
    memory_bytes: int = 512 * 2**20
    output_bytes: int = 64 * 2**10
    disk_bytes: int = 16 * 2**20
    open_files: int = 64
    max_code_bytes: int = 100_000


@dataclass
class SandboxResult:
    """What a run printed, how it ended, and which limit (a key of ``LIMITS``) stopped it."""

    stdout: str
    stderr: str
    returncode: int
    limit: str | None
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.limit is None

    def error_message(self, max_chars: int = 2000) -> str:
        """A short account of the failure for a person or a model to act on ('' when ok):
        the limit hit, if any, and the last ``max_chars`` of stderr (the error is last)."""
        if self.ok:
            return ""
        lines = []
        if self.limit:
            lines.append(f"sandbox limit hit: {self.limit} (the program {LIMITS[self.limit]})")
        tail = self.stderr.strip()[-max_chars:]
        if tail:
            lines.append(tail)
        elif not self.limit:
            lines.append(f"the program exited with status {self.returncode}")
        return "\n".join(lines)


class Sandbox:
    """``Sandbox().run(code) -> SandboxResult``; thread-safe, one fresh interpreter a run.

    ``backend`` is ``"auto"`` (bubblewrap, else hand-built namespaces), ``"bwrap"`` or
    ``"namespaces"``. The first run probes the backend once per process. ``uid``/``gid``
    are who the program runs as when the caller is root; otherwise it runs as the caller.
    """

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        *,
        backend: str = "auto",
        uid: int = 65534,
        gid: int = 65534,
    ) -> None:
        if backend not in ("auto", "bwrap", "namespaces"):
            raise ValueError(f"unknown sandbox backend {backend!r}; use auto, bwrap or namespaces")
        self.limits = limits or SandboxLimits()
        self.requested_backend = backend
        self.uid, self.gid = uid, gid

    @property
    def backend(self) -> str:
        """The backend in use; raises ``SandboxUnavailableError`` when there is none."""
        return _resolve(self.requested_backend, self.uid, self.gid)

    def run(self, code: str) -> SandboxResult:
        size = len(code.encode())
        if size > self.limits.max_code_bytes:
            raise ValueError(
                f"program of {size} bytes is over max_code_bytes={self.limits.max_code_bytes}"
            )
        if "\0" in code:
            raise ValueError("program contains a NUL byte, which cannot be passed to Python")
        return _execute(self.backend, self.limits, self.uid, self.gid, code)


# -- choosing a backend --------------------------------------------------------------------
_RESOLVED: dict[tuple[str, int, int], str] = {}
_RESOLVE_LOCK = threading.Lock()


def _resolve(requested: str, uid: int, gid: int) -> str:
    key = (requested, uid, gid)
    with _RESOLVE_LOCK:
        if key not in _RESOLVED:
            _RESOLVED[key] = _probe(requested, uid, gid)
        return _RESOLVED[key]


def _missing(backend: str) -> str | None:
    """Why a backend cannot run here, or None when it might."""
    if not sys.platform.startswith("linux"):
        return f"the sandbox needs Linux namespaces; this is {sys.platform}"
    if backend == "bwrap":
        if shutil.which("bwrap") is None:
            return "bubblewrap (bwrap) is not installed"
        if os.geteuid() == 0 and shutil.which("setpriv") is None:
            return "setpriv (util-linux) is missing; as root it drops the sandbox to an unprivileged uid"
        return None
    if os.geteuid() != 0:
        return "building namespaces without bubblewrap needs root"
    return None


def _probe(requested: str, uid: int, gid: int) -> str:
    candidates = ["bwrap", "namespaces"] if requested == "auto" else [requested]
    reasons = []
    for backend in candidates:
        reason = _missing(backend)
        if reason is None:
            try:
                probe = "import sys\nprint(6 * 7, sys.prefix)"
                result = _execute(backend, SandboxLimits(wall_s=30), uid, gid, probe)
            except SandboxError as exc:
                reason = str(exc)
            else:
                expected = f"42 {os.path.dirname(os.path.dirname(interpreter()))}"
                if result.stdout.strip() == expected:  # its own standard library, not another
                    log.info("sandbox backend: %s", backend)
                    return backend
                reason = f"a test run printed {result.stdout!r}, stderr {result.stderr[-500:]!r}"
        reasons.append(f"{backend}: {reason}")
    raise SandboxUnavailableError(
        "cannot build a sandbox for model-written code, so it was not run ("
        + "; ".join(reasons)
        + f"). To fix: {_INSTALL_HINT}."
    )


# -- running -------------------------------------------------------------------------------
def _execute(backend: str, limits: SandboxLimits, uid: int, gid: int, code: str) -> SandboxResult:
    mount_point = None
    with contextlib.ExitStack() as fds:
        program = fds.enter_context(_read_only_file(code.encode(), "program"))
        syscall_filter = fds.enter_context(_read_only_file(filter_bytes(), "syscall-filter"))
        if backend == "bwrap":
            argv = bwrap_argv(limits, uid, gid, syscall_filter)
        else:
            mount_point = tempfile.mkdtemp(prefix="apprentice-sandbox-")
            argv = namespaces_argv(limits, uid, gid, mount_point, syscall_filter)
        argv += child_argv(limits)
        try:
            return _supervise(argv, limits, program, syscall_filter)
        finally:
            if mount_point is not None:
                os.rmdir(mount_point)


@contextlib.contextmanager
def _read_only_file(data: bytes, name: str):
    """An fd, read-only and at offset 0, of an anonymous in-memory file holding ``data``:
    no path on disk, nothing in any command line, and no pipe buffer to fill."""
    memfd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        with open(memfd, "wb", closefd=False) as writer:
            writer.write(data)
        fd = os.open(f"/proc/self/fd/{memfd}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(memfd)
    try:
        yield fd
    finally:
        os.close(fd)


def _supervise(
    argv: list[str], limits: SandboxLimits, program: int, syscall_filter: int
) -> SandboxResult:
    """Starts the box, reads its output within the limits, and says how it ended."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        stdin=program,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        cwd="/",
        start_new_session=True,
        pass_fds=(syscall_filter,),
    )
    out, err, limit = _read_bounded(proc, limits, start)
    returncode = proc.wait()
    duration = time.perf_counter() - start
    stdout = out.decode("utf-8", "replace")
    stderr = err.decode("utf-8", "replace")
    if limit is None:
        if returncode == EXIT_SETUP or (returncode and stderr.startswith(_SETUP_PREFIXES)):
            raise SandboxError(f"the sandbox failed to start: {stderr.strip()[-1000:]}")
        limit = _limit_of_status(returncode)
    return SandboxResult(stdout, stderr, returncode, limit, duration)


def _read_bounded(proc: subprocess.Popen, limits: SandboxLimits, start: float):
    chunks = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    limit = None
    with selectors.DefaultSelector() as selector:
        for stream in chunks:
            selector.register(stream, selectors.EVENT_READ)
        while selector.get_map():
            left = limits.wall_s - (time.perf_counter() - start)
            if left <= 0:
                limit = "wall_time"
                break
            for key, _ in selector.select(timeout=left):
                data = os.read(key.fd, 65536)
                if not data:
                    selector.unregister(key.fileobj)
                    continue
                chunks[key.fileobj] += data
            if sum(map(len, chunks.values())) > limits.output_bytes:
                limit = "output"
                break
    if limit is not None:
        _kill(proc)
    for stream, data in chunks.items():
        stream.close()
        del data[limits.output_bytes :]
    return bytes(chunks[proc.stdout]), bytes(chunks[proc.stderr]), limit


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILLs the launcher and every process below it, and waits until they are gone.

    The box dies with its launcher anyway (parent-death signal, pid 1 gone) but a moment
    later; killing the tree by hand means that when ``run`` returns, nothing is left.
    """
    pids = [proc.pid, *_descendants(proc.pid)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids[1:]):
        time.sleep(0.01)


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):
                children = [int(c) for c in (task / "children").read_text().split()]
                found += children
                todo += children
    return found


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _limit_of_status(returncode: int) -> str | None:
    if returncode in _LIMIT_OF_EXIT:
        return _LIMIT_OF_EXIT[returncode]
    sig = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else 0
    if sig:
        return _LIMIT_OF_SIGNAL.get(sig)
    if returncode not in (0, EXIT_ERROR):
        log.debug("sandboxed program exited with status %d", returncode)
    return None
