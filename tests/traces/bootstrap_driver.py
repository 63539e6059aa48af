"""One bootstrap run into a trace store, for the kill test to SIGKILL at random points.

    python tests/traces/bootstrap_driver.py STORE_DIR N_EXAMPLES CALL_DELAY_S CONCURRENCY

The teacher is the demo's scripted one, slowed to ``CALL_DELAY_S`` per call so that a run
lasts seconds. Prints ``ready`` just before bootstrapping starts, and the run's summary
as JSON when it finishes.
"""

from __future__ import annotations

import json
import sys
import time

from recipes.demo.task import TicketTriage, make_examples, metric, teacher

import apprentice as ap
from apprentice.traces import bootstrap_traces


def main(store: str, n: int, delay_s: float, concurrency: int) -> None:
    def slow_teacher(signature, inputs):
        time.sleep(delay_s)
        return teacher(signature, inputs)

    examples = make_examples(n, seed=7)
    print("ready", flush=True)
    result = bootstrap_traces(
        TicketTriage(),
        examples,
        teacher=ap.ScriptedLM(slow_teacher),
        metric=metric,
        store=store,
        concurrency=concurrency,
        progress=False,
    )
    print(json.dumps(result.summary()), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
