"""``python -m apprentice.train JOB.json``: one training process, as ``accelerate launch``
starts it for ``train.launcher.kind: accelerate`` (see ``train/launch.py``)."""

from __future__ import annotations

import logging
import sys

from apprentice.progress import library_bars, show_progress
from apprentice.train.launch import read_job
from apprentice.train.sft import train_adapter


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(
            "usage: python -m apprentice.train JOB.json (written by train_adapter)", file=sys.stderr
        )
        return 2
    job = read_job(argv[0])
    logging.basicConfig(
        level=job.pop("log_level", logging.WARNING),
        format="%(levelname)s %(name)s: %(message)s",
    )
    # Printed at every checkpoint of a model with tied embeddings, which is expected.
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
    with library_bars(show_progress(job["progress"])):  # a terminal's, never a log's
        train_adapter(**job)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
