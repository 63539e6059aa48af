"""CPU training settings: how many threads a run uses, and whether bf16 autocast pays.

Threads.
On a CPU, torch uses every core by default. When other work holds some of those cores,
its threads wait for each other at every operation and a run slows down several-fold
(measured on SmolLM2-135M LoRA, 2 cores, one busy: 45 trained tokens/s with 2 threads,
72 with 1; on a quiet box 2 threads gave 169 and 1 gave 113). So ``"auto"`` counts the
cores that are idle right now and uses that many, at least one. The choice is kept in
the checkpoint, and a resumed run uses it again, so resuming stays bit-exact.

bf16. On a CPU with bf16 matrix instructions (AVX512-BF16 or AMX), autocast nearly doubles
the LoRA tokens/s of a real student (SmolLM2-135M, 2 threads: 323 vs 169); a tiny student
is bound by element-wise work and gains little (1.0-1.35x), so ``"auto"`` turns it on only
for students of at least ``BF16_MIN_PARAMS`` parameters.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

__all__ = ["BF16_MIN_PARAMS", "choose_threads", "cpu_has_bf16", "cpu_threads", "idle_cores"]

BF16_MIN_PARAMS = 50_000_000


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies over all cores from /proc/stat, or None where it is absent."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def idle_cores(sample_s: float = 0.3) -> float | None:
    """How many of this machine's cores sat idle over ``sample_s`` (None if unknown).
    Call it while this process is idle: its own work would count as busy."""
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(sample_s)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return None
    busy_fraction = (second[0] - first[0]) / (second[1] - first[1])
    return (os.cpu_count() or 1) * (1.0 - busy_fraction)


def choose_threads(setting: int | str) -> int:
    """``setting`` itself, or for ``"auto"`` the idle cores this process may use (>= 1)."""
    if setting != "auto":
        return int(setting)
    usable = _usable_cores()
    idle = idle_cores()
    if idle is None:
        return usable
    return max(1, min(usable, int(idle + 0.5)))


@contextlib.contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """torch uses ``n`` intra-op threads within the block; the old count comes back after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (Linux /proc/cpuinfo flags)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False
