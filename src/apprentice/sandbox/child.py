"""Runs inside the sandbox, as the sandboxed interpreter's ``-c`` program (stdlib only).

argv: cpu_seconds memory_bytes file_bytes open_files. The code comes on stdin, never in
argv, where any user of the host could read it in /proc/PID/cmdline; stdin is /dev/null
once it is read. It sets the limits that the kernel enforces on this process (a hard limit
cannot be raised again), runs the code, and turns an uncaught exception into an exit status
that names the limit behind it, so the parent can say which limit stopped a program even
when the program died of a Python error.
"""

import errno
import linecache
import os
import resource
import socket
import sys
import traceback

# Exit statuses; the parent (apprentice.sandbox.sandbox) maps them back to limit names.
EXIT_ERROR = 70
EXIT_LIMIT = {"memory": 80, "processes": 81, "network": 82, "filesystem": 83, "disk": 84}

_NETWORK = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ECONNREFUSED, errno.EADDRNOTAVAIL}
_FILES = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EROFS}
_DISK = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def _limit_of(exc):
    """Which sandbox limit an uncaught exception comes from, or None for an ordinary bug."""
    if isinstance(exc, MemoryError):
        return "memory"
    if isinstance(exc, RuntimeError) and "can't start new thread" in str(exc):
        return "processes"
    if isinstance(exc, socket.gaierror):
        return "network"
    if isinstance(exc, OSError):
        if exc.errno == errno.EAGAIN:  # fork/clone refused: RLIMIT_NPROC is 0
            return "processes"
        if exc.errno in _NETWORK:
            return "network"
        if exc.errno in _DISK:
            return "disk"
        if exc.errno in _FILES and exc.filename is not None:
            return "filesystem"
    return None


def _main(cpu, memory, file_bytes, open_files, code):
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # No new processes or threads: with 0, every fork and clone fails with EAGAIN
    # (enforced because the uid is not root; the launcher made sure of that).
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    linecache.cache["<program>"] = (len(code), None, code.splitlines(True), "<program>")
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(code, "<program>", "exec"), namespace)
    except SystemExit:
        raise
    except BaseException as exc:  # report every failure to the parent, then exit
        namespace.clear()  # frees what the program held: reporting may need memory
        limit = _limit_of(exc)
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)  # from <program>
        sys.stdout.flush()
        sys.stderr.flush()
        sys.exit(EXIT_LIMIT[limit] if limit else EXIT_ERROR)


def _read_program():
    code = sys.stdin.buffer.read().decode("utf-8")
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return code


if __name__ == "__main__":
    _main(*map(int, sys.argv[1:5]), _read_program())
