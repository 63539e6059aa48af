"""When progress bars show: ours (tqdm) and the libraries' (datasets, transformers, hub).

``progress_bar`` is what every long loop of ours draws: a tqdm bar on a terminal (or in a
notebook), and where output goes to a file (CI, nohup, a job log) one plain line at a
modest rate instead (stage, done/total, the loop's figures, elapsed and ETA), so a log
shows signs of life without carriage-return noise. Nothing when progress is off.

``datasets`` and ``transformers`` draw a bar for every dataset save, filter and weight
load; on a terminal that is fine, but in a log file each bar is dozens of carriage-return
lines. ``library_bars(False)`` switches theirs off for the duration of a block and puts
back what was set before, so a caller that wants bars elsewhere keeps them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

__all__ = ["LineProgress", "library_bars", "progress_bar", "show_progress"]

# Seconds between two lines in a log; APPRENTICE_PROGRESS_INTERVAL overrides it.
LINE_INTERVAL_S = 30.0


def show_progress(progress: bool) -> bool:
    """Bars only when asked for and when someone watches: stderr is a terminal."""
    return bool(progress) and sys.stderr.isatty()


@contextlib.contextmanager
def library_bars(enabled: bool) -> Iterator[None]:
    """Within the block, the libraries' bars are on only if ``enabled`` (restored after)."""
    switches = []
    with contextlib.suppress(ImportError):
        import datasets.utils.logging as ds

        switches.append(
            (ds.is_progress_bar_enabled(), ds.enable_progress_bar, ds.disable_progress_bar)
        )
    with contextlib.suppress(ImportError):
        import transformers.utils.logging as tf

        switches.append(
            (tf.is_progress_bar_enabled(), tf.enable_progress_bar, tf.disable_progress_bar)
        )
    with contextlib.suppress(ImportError):
        import huggingface_hub.utils as hub

        switches.append(
            (
                not hub.are_progress_bars_disabled(),
                hub.enable_progress_bars,
                hub.disable_progress_bars,
            )
        )
    for _, enable, disable in switches:
        (enable if enabled else disable)()
    try:
        yield
    finally:
        for was, enable, disable in switches:
            (enable if was else disable)()


def progress_bar(
    total: int | None, desc: str, *, enabled: bool, initial: int = 0, unit: str = "it"
) -> Any:
    """A tqdm bar on a terminal or in a notebook, a ``LineProgress`` where stderr is a file,
    a disabled bar when ``enabled`` is False. All three take ``update(n)``,
    ``set_postfix(**figures)`` and ``close()``."""
    from tqdm.auto import tqdm

    if enabled and not sys.stderr.isatty() and "ipykernel" not in sys.modules:
        return LineProgress(total, desc, initial=initial, unit=unit)
    return tqdm(
        total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, disable=not enabled
    )


class LineProgress:
    """Progress as whole lines: the first update, then at most one line per
    ``interval_s``, and a last line at ``close``. Written by hand because tqdm redraws with
    carriage returns, which a log file keeps as one ever-growing line."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        initial: int = 0,
        unit: str = "it",
        interval_s: float | None = None,
        stream: TextIO | None = None,
    ) -> None:
        if interval_s is None:
            interval_s = float(os.environ.get("APPRENTICE_PROGRESS_INTERVAL", LINE_INTERVAL_S))
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.start_n = initial
        self.interval_s = interval_s
        self.stream = stream
        self.figures: dict[str, Any] = {}
        self.start = time.monotonic()
        self.last: float | None = None
        self.lock = threading.Lock()
        self.closed = False

    def update(self, n: int = 1) -> None:
        with self.lock:
            self.n += n
            now = time.monotonic()
            if self.last is None or now - self.last >= self.interval_s:
                self._write(now)

    def set_postfix(self, refresh: bool = False, **figures: Any) -> None:
        self.figures = figures

    def close(self) -> None:
        with self.lock:
            if not self.closed and self.n > self.start_n:
                self._write(time.monotonic(), final=True)
            self.closed = True

    def line(self, now: float | None = None) -> str:
        elapsed = (now if now is not None else time.monotonic()) - self.start
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        parts = [f"{self.desc}: {done} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts += [f"{k}={v}" for k, v in self.figures.items()]
        parts.append(f"elapsed {_clock(elapsed)}")
        moved = self.n - self.start_n
        if self.total and moved > 0 and elapsed >= 1 and self.n < self.total:
            parts.append(f"ETA {_clock(elapsed / moved * (self.total - self.n))}")
        return ", ".join(parts)

    def _write(self, now: float, final: bool = False) -> None:
        self.last = now
        stream = self.stream or sys.stderr
        print(f"[apprentice] {self.line(now)}" + (" (done)" if final else ""), file=stream)
        stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
