"""The sandbox without bubblewrap: Linux namespaces set up by hand (stdlib only, run as root).

    python -I -S launch_ns.py ROOT TMP_BYTES UID GID RO_PATH[:RO_PATH...] FILTER_FD -- COMMAND...

What bubblewrap would do, in the same order: new mount, network, pid, ipc and uts
namespaces; a fresh tmpfs as the root with only RO_PATHs bound in read-only, a few device
nodes and a size-limited tmpfs at /tmp; pivot_root into it and detach the old root, so no
host path is reachable; then drop to UID/GID with no groups, no capabilities (lost with
root) and no_new_privs, and exec COMMAND. Root is needed for the mounts and the uid
switch; the caller checks that. ROOT is an empty host folder used as the mount point.
FILTER_FD is a pipe holding the seccomp filter (``syscall_filter.py``), loaded last of all,
after the capability bounding set is emptied: no new namespaces, no mounts from inside.
"""

import ctypes
import os
import select
import signal
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT = 1, 2, 4, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
PR_SET_SECCOMP, SECCOMP_MODE_FILTER, PR_CAPBSET_DROP = 22, 2, 24
EXIT_SETUP = 90
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
DEVICES = ("null", "zero", "random", "urandom")

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"sandbox setup: {what} failed: {os.strerror(err)}")


def _mount(source, target, fstype, flags, data=None):
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(
        _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
        f"mount {source} on {target}",
    )


def _bind(source, target, flags=MS_RDONLY | MS_NOSUID | MS_NODEV):
    """Binds ``source`` on ``target``, then remounts it with ``flags`` (read-only by default)."""
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    _mount(source, target, None, MS_BIND | MS_REC)
    _mount(None, target, None, MS_REMOUNT | MS_BIND | flags)


def _build_root(root, tmp_bytes, ro_paths):
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates to the host
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    for path in ro_paths:
        _bind(path, root + path)
    for name in os.listdir("/"):  # merged-/usr links such as /lib -> usr/lib
        link = "/" + name
        if os.path.islink(link) and not os.path.lexists(root + link):
            os.symlink(os.readlink(link), root + link)
    for name in DEVICES:
        _bind("/dev/" + name, f"{root}/dev/{name}", MS_NOSUID)  # /dev/null takes writes
    os.makedirs(root + "/tmp")
    _mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmp_bytes},mode=1777")
    _mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _pivot(root):
    os.chdir(root)
    number = SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise OSError(f"sandbox setup: no pivot_root number known for {os.uname().machine}")
    _check(_libc.syscall(number, b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "detaching the old root")
    os.chdir("/tmp")


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _read_filter(fd):
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def _drop_privileges(uid, gid, syscall_filter):
    cap = 0
    while _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:  # EINVAL past the last one
        cap += 1
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # from root to another uid: every capability is gone
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    code = ctypes.create_string_buffer(syscall_filter, len(syscall_filter))
    program = _SockFprog(len(syscall_filter) // 8, ctypes.cast(code, ctypes.c_void_p))
    mode = ctypes.c_ulong(SECCOMP_MODE_FILTER)
    _check(_libc.prctl(PR_SET_SECCOMP, mode, ctypes.byref(program), 0, 0), "seccomp filter")


def _wait_and_mirror(pid):
    """The launcher's parent half: wait for the sandbox and exit the way it exited."""
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def main(argv):
    split = argv.index("--")
    root, tmp_bytes, uid, gid, ro, filter_fd = argv[:split]
    command = argv[split + 1 :]
    try:
        syscall_filter = _read_filter(int(filter_fd))
    except (OSError, ValueError) as exc:
        print(f"sandbox setup: reading the syscall filter failed: {exc}", file=sys.stderr)
        sys.exit(EXIT_SETUP)
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    if _libc.unshare(flags) != 0:
        print(f"sandbox setup: unshare failed: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        sys.exit(EXIT_SETUP)
    alive_r, alive_w = os.pipe()  # EOF on alive_r: the parent is gone
    pid = os.fork()  # the child is pid 1 of the new pid namespace
    if pid:
        os.close(alive_r)
        _wait_and_mirror(pid)
    os.close(alive_w)
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "parent-death signal")
    if select.select([alive_r], [], [], 0)[0]:  # it died before the signal was armed
        os._exit(137)
    os.close(alive_r)
    try:
        os.setsid()
        _build_root(root, int(tmp_bytes), [p for p in ro.split(":") if p])
        _pivot(root)
    except OSError as exc:
        print(f"sandbox setup: {exc}", file=sys.stderr, flush=True)
        os._exit(EXIT_SETUP)
    # pid 1 of a namespace ignores signals it has no handler for, the kernel's SIGXCPU
    # included, so the program runs as pid 2 and this process only reaps and reports.
    program = os.fork()
    if program:
        _, status = os.waitpid(program, 0)
        code = os.waitstatus_to_exitcode(status)
        os._exit(128 - code if code < 0 else code)
    try:
        _drop_privileges(int(uid), int(gid), syscall_filter)
    except OSError as exc:
        print(f"sandbox setup: {exc}", file=sys.stderr, flush=True)
        os._exit(EXIT_SETUP)
    os.execve(command[0], command, {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"})


if __name__ == "__main__":
    main(sys.argv[1:])
