"""When progress bars show: ours (tqdm) and the libraries' (datasets, transformers, hub).

``datasets`` and ``transformers`` draw a bar for every dataset save, filter and weight
load; on a terminal that is fine, but in a log file each bar is dozens of carriage-return
lines. ``library_bars(False)`` switches theirs off for the duration of a block and puts
back what was set before, so a caller that wants bars elsewhere keeps them.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

__all__ = ["library_bars", "show_progress"]


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
