"""The quiet-box rule shared by the benchmarks: every timed run records the machine's load,
and a number measured while other work held the cores is never reported as a result.

Why. On the shared 2-core build box, timings moved 3-10x with other people's work while the
scripts printed their ratios as results (docs/benchmarks.md: bench_overhead's DSPy ratio
swung 5.5x-18.5x, bench_local's absolute times rose ~9x). torch's OpenMP threads wait for
each other at every operation, so a run whose threads lack a core slows down far more than
the share of CPU it lost, and two contenders measured minutes apart see different boxes.

What is recorded around each run (``LoadProbe``):

  load_before, load_after  the 1-minute load average (``os.getloadavg``) at each end
  other_cpu_cores          the cores' busy time during the run (/proc/stat, steal included)
                           minus this process's and its children's CPU time, over the run's
                           wall time: how many cores other work used (None off Linux)

A run is busy when the load beyond its own threads exceeds ``LOAD_PER_CORE`` per core, or
when other work used more than ``OTHER_CPU_PER_CORE`` of each core. A set of runs is a
result only with no busy run and at least ``MIN_REPS`` repetitions (medians of fewer are
not). Only the standard library is imported here: the TRL and DSPy venvs run it too.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

LOAD_PER_CORE = 0.5  # 1-min load beyond the run's own threads, per core
OTHER_CPU_PER_CORE = 0.25  # CPU used by other processes during the run, per core
MIN_REPS = 3
NOT_A_RESULT_EXIT = 3  # exit status of a benchmark whose numbers are not a result

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_seconds() -> float | None:
    """Seconds of CPU time all cores have spent busy since boot (None where unknown)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal: everything but idle and iowait is busy
    # (steal is the hypervisor running someone else on our core: other work too).
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields) - idle) / _TICK


def _own_seconds(pids: tuple[int, ...]) -> float:
    """CPU seconds of this process, its reaped children and the still-running ``pids``."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "(comm)"; utime, stime are 14, 15
        total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


class LoadProbe:
    """``with LoadProbe(own_threads=2) as probe: run()`` -> ``probe.record`` (a dict).

    ``own_threads``: how many runnable threads the run itself keeps busy (its share of the
    load average); ``own_pids``: processes of the run that are not reaped children of this
    one (a stub server), whose CPU time is the run's own."""

    def __init__(self, own_threads: int, own_pids: tuple[int, ...] = ()):
        self.own_threads = own_threads
        self.own_pids = own_pids
        self.record: dict = {}

    def __enter__(self) -> LoadProbe:
        self._load = os.getloadavg()[0]
        self._busy = _busy_seconds()
        self._own = _own_seconds(self.own_pids)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._start
        busy = _busy_seconds()
        other = None
        if busy is not None and self._busy is not None and wall > 0:
            own = _own_seconds(self.own_pids) - self._own
            other = max(0.0, (busy - self._busy) - own) / wall
        self.record = {
            "load_before": self._load,
            "load_after": os.getloadavg()[0],
            "other_cpu_cores": other,
            "wall_s": wall,
            "own_threads": self.own_threads,
            "cores": os.cpu_count() or 1,
        }
        self.record["busy"] = busy_reason(self.record)


def busy_reason(record: dict) -> str | None:
    """Why a run's load record makes it a busy-box run, or None for a quiet one."""
    cores = record["cores"]
    load = max(record["load_before"], record["load_after"])
    extra = load - record["own_threads"]
    if extra > LOAD_PER_CORE * cores:
        return (
            f"load average {load:.2f} is {extra:.2f} beyond the run's own "
            f"{record['own_threads']} thread(s) on {cores} cores (limit {LOAD_PER_CORE} per core)"
        )
    other = record.get("other_cpu_cores")
    if other is not None and other > OTHER_CPU_PER_CORE * cores:
        return (
            f"other processes used {other:.2f} of {cores} cores during the run "
            f"(limit {OTHER_CPU_PER_CORE} per core)"
        )
    return None


def problems(records: dict[str, list[dict]], reps: int) -> list[str]:
    """Why these runs (contender name -> its load records) are not a result; [] if they are."""
    found = []
    if reps < MIN_REPS:
        found.append(f"{reps} repetition(s): a result is the median of at least {MIN_REPS}")
    for name, runs in records.items():
        for i, record in enumerate(runs):
            if record.get("busy"):
                found.append(f"{name}, repetition {i + 1}: {record['busy']}")
    return found


def describe(record: dict) -> str:
    """One short line for a run's load, for the progress output."""
    other = record.get("other_cpu_cores")
    text = f"load {record['load_before']:.2f}->{record['load_after']:.2f}"
    if other is not None:
        text += f", others {other:.2f} cores"
    return text + (", BUSY" if record.get("busy") else "")


def banner(found: list[str]) -> str:
    """The loud notice printed above and below numbers that are not a result."""
    if not found:
        return "quiet box: no run was disturbed by other work; these numbers are a result"
    lines = ["NOT A RESULT: do not report these numbers; rerun on a quiet box. Why:"]
    lines += [f"  - {p}" for p in found[:12]]
    if len(found) > 12:
        lines.append(f"  - ... and {len(found) - 12} more")
    return "\n".join(["!" * 78, *lines, "!" * 78])
