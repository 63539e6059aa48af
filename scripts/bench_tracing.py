"""What tracing costs per predictor call, off and on: a micro-benchmark on ScriptedLM.

    .venv/bin/python scripts/bench_tracing.py [--calls 5000] [--rounds 5] [--base SRC]

Each round runs, in fresh interpreters and in rotating order, ``--calls`` calls of a
two-predictor program (three module calls, two LM calls per run) on ScriptedLM:

  off       this tree, tracing off (the default)
  on        this tree, ap.enable_tracing(InMemorySpanExporter(), batch=False)
  base      the tree at ``--base`` (a src/ folder without tracing, e.g. from
            `git archive <commit> src | tar -x -C /tmp/base`), when given

and prints the median microseconds per program run. ScriptedLM answers in-process, so
the figures are apprentice's own per-call work, with no network in them. The machine's
load is printed next to them (a busy box makes every figure slower and noisier).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def worker(mode: str, calls: int) -> float:
    import apprentice as ap

    def script(signature, inputs):
        if "query" in signature.output_fields:
            return {"query": "q"}
        return {"answer": "a"}

    class Answer(ap.Module):
        def __init__(self) -> None:
            self.answer = ap.Predict("question -> answer")

        def forward(self, question):
            return self.answer(question=question)

    class TwoSteps(ap.Module):
        def __init__(self) -> None:
            self.rewrite = ap.Predict("question -> query")
            self.hop = Answer()

        def forward(self, question):
            return self.hop(question=self.rewrite(question=question).query)

    program = TwoSteps()
    program.set_lm(ap.ScriptedLM(script, history_size=0))
    if mode == "on":
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )

        exporter = InMemorySpanExporter()
        ap.enable_tracing(exporter, batch=False)
    for i in range(200):  # warm-up
        program(question=f"warm {i}")
    start = time.perf_counter()
    for i in range(calls):
        program(question=f"q {i}")
        if mode == "on" and i % 500 == 0:
            exporter.clear()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--base", help="a src/ folder of apprentice without tracing")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.calls)))
        return
    modes = {"off": str(SRC), "on": str(SRC)}
    if args.base:
        modes["base"] = args.base
    results: dict[str, list[float]] = {m: [] for m in modes}
    load_before = os.getloadavg()[0]
    for round_ in range(args.rounds):
        order = list(modes)[round_ % len(modes) :] + list(modes)[: round_ % len(modes)]
        for mode in order:
            env = {**os.environ, "PYTHONPATH": modes[mode]}
            worker_mode = "off" if mode == "base" else mode
            cmd = [sys.executable, __file__, "--worker", worker_mode, "--calls", str(args.calls)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            results[mode].append(float(done.stdout.strip().splitlines()[-1]))
    load_after = os.getloadavg()[0]
    print(f"load average (1 min) before {load_before:.2f}, after {load_after:.2f}")
    for mode, values in results.items():
        spread = f"{min(values):.1f}-{max(values):.1f}"
        print(f"{mode:5s} {statistics.median(values):8.1f} us per program run  ({spread})")


if __name__ == "__main__":
    main()
