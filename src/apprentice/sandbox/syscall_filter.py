"""The seccomp filter every sandboxed program runs under: no new namespaces, no mounts.

The box's uid has no capabilities, but a Linux process may still create a user namespace
(the kernel allows it unprivileged on most distributions) and hold every capability inside
it: CAP_NET_ADMIN over a network namespace of its own, CAP_SYS_ADMIN over mounts. That is
kernel surface the program has no business reaching. This filter answers EPERM to
``unshare``, ``setns``, ``clone`` with any namespace flag, and the mount family
(``mount``, ``umount2``, ``pivot_root``, ``chroot`` and the new mount API), and ENOSYS to
``clone3`` (its flags live in memory a filter cannot read; the C library then falls back to
``clone``, which the filter can check). A syscall of another ABI (i386 or x32 on x86_64)
kills the process, so the filter cannot be bypassed through a second syscall table.

Written by hand rather than with libseccomp's bindings: the program is ~25 classic-BPF
instructions; bubblewrap (``--seccomp FD``) takes the compiled program as raw bytes, and
``launch_ns.py`` loads the same bytes with one ``prctl`` from the stdlib, so the parent only
has to produce bytes. The Python bindings on PyPI (``pyseccomp``, last released 2021)
would add an unmaintained package and a system libseccomp for those 25 instructions.
"""

from __future__ import annotations

import errno
import os
import struct

__all__ = ["NAMESPACE_FLAGS", "filter_bytes"]

# clone(2) flags that make a namespace: CLONE_NEWTIME, NEWNS, NEWCGROUP, NEWUTS, NEWIPC,
# NEWUSER, NEWPID, NEWNET. All sit in the low 32 bits of the first argument.
NAMESPACE_FLAGS = 0x80 | 0x20000 | 0x02000000 | 0x04000000 | 0x08000000
NAMESPACE_FLAGS |= 0x10000000 | 0x20000000 | 0x40000000

# Per machine: the audit arch value seccomp reports, and syscall numbers (asm/unistd.h).
_NEW_MOUNT_API = {"open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431}
_NEW_MOUNT_API |= {"fsmount": 432, "fspick": 433, "mount_setattr": 442}
_ARCHES = {
    "x86_64": {
        "audit_arch": 0xC000003E,
        "foreign_above": 0x40000000,  # x32 syscalls are numbered from __X32_SYSCALL_BIT up
        "clone": 56,
        "clone3": 435,
        "refused": {"unshare": 272, "setns": 308, "mount": 165, "umount2": 166}
        | {"pivot_root": 155, "chroot": 161}
        | _NEW_MOUNT_API,
    },
    "aarch64": {
        "audit_arch": 0xC00000B7,
        "foreign_above": None,
        "clone": 220,
        "clone3": 435,
        "refused": {"unshare": 97, "setns": 268, "mount": 40, "umount2": 39}
        | {"pivot_root": 41, "chroot": 51}
        | _NEW_MOUNT_API,
    },
}

# Classic BPF opcodes and seccomp return values (linux/filter.h, linux/seccomp.h).
_LOAD_WORD, _JEQ, _JGE, _JSET, _RETURN = 0x20, 0x15, 0x35, 0x45, 0x06
_KILL_PROCESS, _ERRNO, _ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6].
_NR, _ARCH, _ARG0_LOW = 0, 4, 16


def filter_bytes(machine: str | None = None) -> bytes:
    """The filter as the kernel's ``struct sock_filter`` array, for ``machine`` (default:
    this one). Raises ``OSError`` for a machine whose syscall numbers are not known here."""
    machine = machine or os.uname().machine
    arch = _ARCHES.get(machine)
    if arch is None:
        raise OSError(f"the sandbox's syscall filter knows x86_64 and aarch64, not {machine}")
    # (opcode, k, jump-if-true label, jump-if-false label); None means the next instruction.
    program = [(_LOAD_WORD, _ARCH, None, None), (_JEQ, arch["audit_arch"], None, "kill")]
    program.append((_LOAD_WORD, _NR, None, None))
    if arch["foreign_above"] is not None:
        program.append((_JGE, arch["foreign_above"], "kill", None))
    for number in arch["refused"].values():
        program.append((_JEQ, number, "eperm", None))
    program.append((_JEQ, arch["clone3"], "enosys", None))
    program.append((_JEQ, arch["clone"], None, "allow"))
    program.append((_LOAD_WORD, _ARG0_LOW, None, None))
    program.append((_JSET, NAMESPACE_FLAGS, "eperm", "allow"))
    returns = {
        "allow": _ALLOW,
        "eperm": _ERRNO | errno.EPERM,
        "enosys": _ERRNO | errno.ENOSYS,
        "kill": _KILL_PROCESS,
    }
    at = {label: len(program) + i for i, label in enumerate(returns)}
    out = bytearray()
    for index, (opcode, k, if_true, if_false) in enumerate(program):
        jt = at[if_true] - index - 1 if if_true else 0
        jf = at[if_false] - index - 1 if if_false else 0
        out += struct.pack("=HBBI", opcode, jt, jf, k)
    for value in returns.values():
        out += struct.pack("=HBBI", _RETURN, 0, 0, value)
    return bytes(out)
