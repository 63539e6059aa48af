"""The offline demo: run the two-step ticket program with a scripted teacher and evaluate it.

    scripts/demo            # sets up .venv, then runs this

Later stages (bootstrap traces, distil into a tiny student, serve) extend this demo.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import apprentice as ap
from recipes.demo.task import TicketTriage, make_examples, metric, teacher


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=200, help="dev-set size")
    parser.add_argument("--out", type=Path, default=None, help="where to save the program JSON")
    args = parser.parse_args(argv)

    lm = ap.ScriptedLM(teacher, price=ap.Price(input=0.15, output=0.60))
    ap.configure(lm=lm)
    program = TicketTriage()
    devset = make_examples(args.examples, seed=1)

    result = ap.Evaluate(devset=devset, metric=metric, num_threads=8)(program)
    print(f"\nteacher score on {len(devset)} tickets: {result.score:.3f} ({result.errors} errors)")
    print("predictors:", [path for path, _ in program.named_predictors()])
    usage = lm.usage.summary()
    print(
        f"LM calls: {usage['calls']}, words in/out: {usage['prompt_tokens']}/"
        f"{usage['completion_tokens']}, cost at the demo's price: ${usage['cost_usd']:.4f}"
    )
    print("\nthe last call, as the model saw it:")
    lm.inspect_history(1)

    out = args.out or Path(tempfile.mkdtemp(prefix="apprentice-demo-")) / "program.json"
    program.save(out)
    result.to_csv(out.with_name("results.csv"))
    print(f"\nsaved the program to {out} and per-example results to {out.with_name('results.csv')}")
    return 0 if result.score >= 0.99 else 1


if __name__ == "__main__":
    raise SystemExit(main())
