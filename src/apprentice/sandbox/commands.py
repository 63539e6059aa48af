"""The command lines that build the sandbox: bubblewrap's, or ``launch_ns.py``'s (as root).

Both end in the same sandboxed interpreter running ``child.py``; the program itself is
never on a command line (it goes in on stdin), and the seccomp filter goes in as an fd.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from apprentice.sandbox.sandbox import SandboxLimits

_HERE = Path(__file__).resolve().parent
_CHILD = (_HERE / "child.py").read_text()
_LAUNCH_NS = _HERE / "launch_ns.py"
_DEVICES = ("null", "zero", "random", "urandom")


def interpreter() -> str:
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _readonly_paths() -> list[str]:
    """/usr plus the Python installation (when it lives elsewhere, e.g. under /root)."""
    paths = ["/usr"]
    for path in (
        os.path.realpath(sys.base_prefix),
        os.path.dirname(os.path.dirname(interpreter())),
    ):
        if not any(path == p or path.startswith(p + "/") for p in paths):
            paths.append(path)
    return paths


def child_argv(limits: SandboxLimits) -> list[str]:
    numbers = (limits.cpu_s, limits.memory_bytes, limits.disk_bytes, limits.open_files)
    return [interpreter(), "-I", "-S", "-c", _CHILD, *map(str, numbers)]


def _drop_to(uid: int, gid: int) -> list[str]:
    setpriv = shutil.which("setpriv") or "setpriv"
    ids = ["--reuid", str(uid), "--regid", str(gid), "--clear-groups"]
    return [setpriv, *ids, "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all"]


def bwrap_argv(limits: SandboxLimits, uid: int, gid: int, filter_fd: int) -> list[str]:
    # As root, bwrap's --disable-userns would need --unshare-user, which maps the box's
    # uid onto host root (and root is never held to RLIMIT_NPROC); there the seccomp
    # filter alone keeps the program out of new namespaces.
    root = os.geteuid() == 0
    argv = [shutil.which("bwrap") or "bwrap", "--seccomp", str(filter_fd)]
    argv += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
    argv += ["--unshare-cgroup-try"] + ([] if root else ["--unshare-user", "--disable-userns"])
    argv += ["--die-with-parent", "--new-session", "--clearenv"]
    argv += ["--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp"]
    argv += ["--setenv", "LANG", "C.UTF-8"]
    made = set()
    for path in _readonly_paths():
        for parent in reversed(Path(path).parents[:-1]):  # bwrap would make them 0700
            if parent not in made:
                made.add(parent)
                argv += ["--perms", "0755", "--dir", str(parent)]
        argv += ["--ro-bind", path, path]
    for name in sorted(os.listdir("/")):  # merged-/usr links such as /lib -> usr/lib
        if os.path.islink("/" + name):
            argv += ["--symlink", os.readlink("/" + name), "/" + name]
    argv += ["--perms", "0755", "--dir", "/dev"]
    for name in _DEVICES:  # not --dev: its /dev and /dev/shm are writable, unbounded tmpfs
        argv += ["--dev-bind", f"/dev/{name}", f"/dev/{name}"]
    argv += ["--perms", "1777", "--size", str(limits.disk_bytes)]
    argv += ["--tmpfs", "/tmp", "--remount-ro", "/", "--chdir", "/tmp"]
    if root:  # bwrap as root keeps the host uids: drop to uid inside, after the mounts
        caps = ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP")  # SETPCAP empties the bounding set
        argv += [arg for cap in caps for arg in ("--cap-add", cap)] + ["--", *_drop_to(uid, gid)]
    else:
        argv += ["--"]
    return argv


def namespaces_argv(
    limits: SandboxLimits, uid: int, gid: int, mount_point: str, filter_fd: int
) -> list[str]:
    ro = ":".join(_readonly_paths())
    launcher = [sys.executable, "-I", "-S", str(_LAUNCH_NS), mount_point]
    return [*launcher, str(limits.disk_bytes), str(uid), str(gid), ro, str(filter_fd), "--"]
