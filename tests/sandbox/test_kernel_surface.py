"""What a sandboxed program can reach of the kernel and of the host's process table: no new
namespaces, no capabilities (not even by making a user namespace of its own), and its code
in no process's command line. Each runs on every backend this machine has (``box``).
"""

from __future__ import annotations

import os
import stat
import struct
import threading
import time
import uuid
from pathlib import Path

import pytest

from apprentice.sandbox import Sandbox, SandboxError, SandboxUnavailableError
from apprentice.sandbox import sandbox as sandbox_module
from apprentice.sandbox.syscall_filter import filter_bytes

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
EPERM = 1

UNSHARE = """import ctypes
libc = ctypes.CDLL(None, use_errno=True)
for flags in {flags}:
    print(libc.unshare(flags), ctypes.get_errno())
"""

CAPABILITIES = """import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.unshare(0x10000000)  # a user namespace would hold every capability inside it
header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
sets = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable; two 32-bit words each
assert libc.capget(header, sets) == 0, ctypes.get_errno()
bounding = [cap for cap in range(64) if libc.prctl(23, cap, 0, 0, 0) == 1]  # PR_CAPBSET_READ
print(list(sets), bounding)
"""


@pytest.mark.parametrize(
    "flags",
    [[CLONE_NEWUSER], [CLONE_NEWNET], [CLONE_NEWUSER, CLONE_NEWNET], [CLONE_NEWNS]],
    ids=["user", "net", "user-then-net", "mount"],
)
def test_a_program_cannot_make_namespaces(box, flags):
    result = box.run(UNSHARE.format(flags=flags))
    assert result.ok, result.error_message()
    assert result.stdout.splitlines() == [f"-1 {EPERM}"] * len(flags)


def test_a_program_holds_no_capabilities_even_after_asking_for_a_user_namespace(box):
    result = box.run(CAPABILITIES)
    assert result.ok, result.error_message()
    assert result.stdout == "[0, 0, 0, 0, 0, 0] []\n"


def test_a_programs_code_is_in_no_command_line_while_it_runs(box):
    """Polls /proc while the program sleeps (up to 30 s); the program is found by the
    sandbox's own child script, which is in the command line, and the code must not be."""
    marker = f"secret_{uuid.uuid4().hex}"
    code = f"import time\n{marker} = 1\ntime.sleep(3)\nprint({marker})"
    done = []
    runner = threading.Thread(target=lambda: done.append(box.run(code)))
    runner.start()
    seen_program, seen_code = False, []
    deadline = time.monotonic() + 30
    while runner.is_alive() and time.monotonic() < deadline:
        for cmdline in _command_lines():
            seen_program |= "def _limit_of(exc)" in cmdline
            if marker in cmdline:
                seen_code.append(cmdline[:200])
        time.sleep(0.05)
    runner.join()
    assert done and done[0].stdout == "1\n", done
    assert seen_program, "the sandboxed interpreter was never seen running"
    assert seen_code == []


@pytest.mark.parametrize("broken", [b"", b"\x06\x00\x00"], ids=["empty", "truncated"])
def test_a_filter_that_cannot_be_loaded_stops_the_run_before_the_code(box, monkeypatch, broken):
    monkeypatch.setattr(sandbox_module, "filter_bytes", lambda: broken)
    with pytest.raises(SandboxError, match="failed to start"):
        box.run("print('ran without a filter')")


def _command_lines():
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            yield Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
        except OSError:
            continue


def test_a_unicode_program_arrives_intact_on_stdin_and_stdin_is_then_empty(box):
    result = box.run("import sys\nprint('héllo ✓', repr(sys.stdin.read()))")
    assert result.stdout == "héllo ✓ ''\n", result.error_message()


def _run_filter(program: bytes, nr: int, arch: int, arg0: int = 0) -> int:
    """Classic BPF as the kernel runs it, for the few opcodes the filter uses."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    insns = [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
    pc = acc = 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == 0x06:  # return k
            return k
        if code == 0x20:  # load a word of seccomp_data
            acc = struct.unpack_from("=I", data, k)[0]
            pc += 1
            continue
        taken = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
        pc += 1 + (jt if taken else jf)


ALLOW, KILL = 0x7FFF0000, 0x80000000
ERRNO_EPERM, ERRNO_ENOSYS = 0x00050000 | 1, 0x00050000 | 38


@pytest.mark.parametrize(
    "machine, arch, numbers",
    [
        ("x86_64", 0xC000003E, {"unshare": 272, "setns": 308, "mount": 165, "clone": 56}),
        ("aarch64", 0xC00000B7, {"unshare": 97, "setns": 268, "mount": 40, "clone": 220}),
    ],
)
def test_the_filter_refuses_namespace_calls_and_lets_the_rest_through(machine, arch, numbers):
    program = filter_bytes(machine)
    assert len(program) // 8 < 64
    verdict = lambda nr, arg0=0, a=arch: _run_filter(program, nr, a, arg0)  # noqa: E731
    for name in ("unshare", "setns", "mount"):
        assert verdict(numbers[name]) == ERRNO_EPERM, name
    for flag in (CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWNS):
        assert verdict(numbers["clone"], 0x11 | flag) == ERRNO_EPERM  # SIGCHLD | flag
    assert verdict(numbers["clone"], 0x11) == ALLOW  # a plain fork: RLIMIT_NPROC's job
    assert verdict(435) == ERRNO_ENOSYS  # clone3: the C library falls back to clone
    assert verdict(0) == ALLOW and verdict(63) == ALLOW  # read, uname / read, ...
    assert verdict(0, a=0x40000003) == KILL  # another ABI (i386) cannot go around it
    if machine == "x86_64":
        assert verdict(0x40000000 | 272) == KILL  # x32's unshare
    with pytest.raises(OSError, match="not riscv64"):
        filter_bytes("riscv64")


# -- refusing --------------------------------------------------------------------------------
def test_a_backend_that_fails_its_test_run_is_refused_and_the_code_never_runs(
    monkeypatch, tmp_path
):
    """bwrap is 'installed' but broken, namespaces need root: nothing may run the code, not
    even outside a box (the program would leave a file in the host's tmp_path)."""
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: creating new namespace failed' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(sandbox_module.shutil, "which", lambda name: str(fake))
    monkeypatch.setattr(sandbox_module.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(sandbox_module, "_RESOLVED", {})
    escaped = tmp_path / "ran-unsandboxed"
    with pytest.raises(SandboxUnavailableError) as info:
        Sandbox().run(f"open({str(escaped)!r}, 'w').write('x')")
    assert "creating new namespace failed" in str(info.value)
    assert "apt-get install bubblewrap" in str(info.value)
    assert not escaped.exists()
