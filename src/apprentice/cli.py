"""``apprentice``: distil a program into a local student from one recipe.

Each stage writes into the run directory and can be run alone; ``distill`` runs them all
and skips whatever is already done.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

__all__ = ["main"]

_DESCRIPTION = """\
Distil a language-model program into a small local student.

  apprentice distill recipes/demo/causal.yaml      # every stage, into runs/<name>/
  apprentice report runs/demo-causal               # one stage, on an existing run
  apprentice train RECIPE --num-processes 2        # train under accelerate launch

A recipe (YAML) names the program, the data, the teacher and the student; see
recipes/ for examples. Re-running a command reuses finished stages and resumes
interrupted ones: no teacher call is made twice for the same example.
"""

_TRUST = """\
A recipe is code: its program, metric, data factory and teacher script are Python
import paths, and running it runs them, with your permissions, the way
`python script.py` does. Run only recipes you would run as scripts. `apprentice
report` and `apprentice serve` read a run directory's files and never run its
recipe's code. The teacher's API key goes only to a known provider's API or to this
machine unless you name the recipe's host with --allow-key-host HOST.
"""

_STAGE_HELP = {
    "distill": "run every stage: bootstrap, dataset, train, bind, optimize (with an "
    "optimize section), eval, report",
    "bootstrap": "run the teacher over the training data and record traces",
    "dataset": "turn passing traces into a training dataset",
    "train": "finetune the student on the dataset (LoRA or full), then bind it",
    "bind": "bind the trained student to the program on the recipe's serve backend",
    "optimize": "BetterTogether: prompt and weight steps as the recipe's optimize section "
    "says, each step scored",
    "eval": "score teacher, untrained and trained student on the dev set",
    "report": "write report.md and plots from the evaluation results",
}


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target", help="a recipe YAML, or a run directory made by an earlier command"
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="where the run's files go (default: the recipe's run_dir, else runs/<name>)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set train.epochs=3 (repeatable)",
    )
    parser.add_argument(
        "--allow-key-host",
        dest="allow_key_hosts",
        action="append",
        default=[],
        metavar="HOST",
        help="let the teacher's API key go to this host although it is neither a known "
        "provider's API nor this machine (repeatable; also $APPRENTICE_ALLOW_KEY_HOSTS)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _add_launcher_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "launcher", "run the training under `accelerate launch` (docs/training.md)"
    )
    group.add_argument(
        "--launcher",
        choices=("none", "accelerate"),
        default=None,
        help="accelerate: train in processes started by accelerate's launcher (several GPUs "
        "or machines, FSDP, DeepSpeed); none: in this process (default: the recipe's "
        "train.launcher.kind)",
    )
    group.add_argument(
        "--accelerate-config",
        metavar="FILE",
        default=None,
        help="accelerate config YAML (from `accelerate config`); implies --launcher accelerate",
    )
    group.add_argument(
        "--num-processes",
        type=int,
        metavar="N",
        default=None,
        help="training processes to start; implies --launcher accelerate",
    )


# The commands that run the program, so have spans to send (the recipe's tracing section).
TRACED = ("distill", "bootstrap", "optimize", "eval")


def _add_trace_arguments(parser: argparse.ArgumentParser) -> None:
    from apprentice.tracing import EXPORTERS

    group = parser.add_argument_group(
        "tracing",
        "OpenTelemetry spans of every program run, module, predictor and LM call; these "
        "flags override the recipe's tracing section for this command",
    )
    group.add_argument(
        "--trace",
        choices=EXPORTERS,
        default=None,
        metavar="EXPORTER",
        help="where the spans go: otlp (a collector over OTLP/HTTP), jsonl (a file, one span "
        "a line), console (stderr), or none (off, whatever the recipe says)",
    )
    group.add_argument(
        "--trace-endpoint",
        metavar="URL",
        default=None,
        help="otlp: the collector, e.g. http://localhost:4318 (default: "
        "$OTEL_EXPORTER_OTLP_ENDPOINT, else localhost:4318)",
    )
    group.add_argument(
        "--trace-path",
        metavar="FILE",
        default=None,
        help="jsonl: the file the spans are appended to (default: spans.jsonl in the run "
        "directory, or in --out DIR)",
    )


def _tracing(args: argparse.Namespace, section):
    """The recipe's tracing section (None: none) with the --trace flags over it."""
    from pydantic import ValidationError

    from apprentice.tracing import TracingConfig

    flags = {"endpoint": args.trace_endpoint, "path": args.trace_path}
    if args.trace is None and section is None:
        given = [f"--trace-{k}" for k, v in flags.items() if v is not None]
        if given:
            raise ValueError(f"{given[0]} needs --trace EXPORTER (or a recipe's tracing section)")
        return None
    values = section.model_dump() if section is not None else {}
    if args.trace is not None and args.trace != values.get("exporter"):
        # Another exporter: the section's endpoint or path were the other one's.
        values = {"exporter": args.trace, "service_name": values.get("service_name", "apprentice")}
    values.update({k: v for k, v in flags.items() if v is not None})
    try:
        return TracingConfig(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise ValueError(f"--trace: {error['msg'].removeprefix('Value error, ')}") from None


def _add_program_file_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "a saved program",
        "apprentice eval PROGRAM.json --program pkg.mod:Class --data FILE --metric pkg.mod:fn "
        "scores any saved program on any data file (JSONL, JSON, CSV, HF datasets folder)",
    )
    group.add_argument("--data", default=None, help="the examples: a file or datasets folder")
    group.add_argument("--program", default=None, help="the program's class, pkg.module:Class")
    group.add_argument("--metric", default=None, help="the metric, pkg.module:fn")
    group.add_argument(
        "--inputs",
        default=None,
        help="comma-separated input fields (default: the program's forward() arguments)",
    )
    group.add_argument("--split", default=None, help="the split of a DatasetDict folder")
    group.add_argument("--limit", type=int, default=None, help="the first N examples only")
    group.add_argument("--threads", type=int, default=8, help="examples run at once")
    group.add_argument("--out", type=Path, default=None, help="write eval.json and a report")
    group.add_argument(
        "--trusted",
        action="store_true",
        help="load the file's LM settings as written (endpoints included): files you made",
    )


def _eval_program_file(args: argparse.Namespace) -> int:
    from apprentice.eval_file import evaluate_program_file
    from apprentice.evaluate.report import results_table
    from apprentice.tracing import export_spans

    if args.metric is None:
        raise ValueError("give the metric with --metric pkg.module:fn")
    if args.overrides or args.run_dir is not None:
        raise ValueError("--set and --run-dir are for recipes and runs, not a program file")
    tracing = _tracing(args, None)
    spans = args.out / "spans.jsonl" if args.out is not None else None
    with export_spans(tracing, default_path=spans):
        result = evaluate_program_file(
            args.target,
            program=args.program,
            data=args.data,
            metric=args.metric,
            inputs=[f.strip() for f in args.inputs.split(",")] if args.inputs else None,
            split=args.split,
            limit=args.limit,
            num_threads=args.threads,
            out_dir=args.out,
            trusted=args.trusted,
            progress=not args.quiet,
        )
    print(results_table([result]))
    return 0


def _launcher_overrides(args: argparse.Namespace) -> list[str]:
    """The launcher flags as recipe overrides (train.launcher.*), so the run records them."""
    if getattr(args, "launcher", None) is None and (
        getattr(args, "accelerate_config", None) or getattr(args, "num_processes", None)
    ):
        args.launcher = "accelerate"
    overrides = []
    if getattr(args, "launcher", None) is not None:
        overrides.append(f"train.launcher.kind={args.launcher}")
    if getattr(args, "accelerate_config", None) is not None:
        config = str(Path(args.accelerate_config).resolve())  # the run may be reopened elsewhere
        overrides.append(f"train.launcher.config_file={json.dumps(config)}")
    if getattr(args, "num_processes", None) is not None:
        overrides.append(f"train.launcher.num_processes={args.num_processes}")
    return overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apprentice",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks and debug logging"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, text in _STAGE_HELP.items():
        p = sub.add_parser(
            name,
            help=text,
            description=text,
            epilog=_TRUST if name != "report" else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_run_arguments(p)
        if name in ("train", "distill"):
            _add_launcher_arguments(p)
        if name == "eval":
            _add_program_file_arguments(p)
        if name in TRACED:
            _add_trace_arguments(p)
        if name in ("bootstrap", "distill"):
            p.add_argument(
                "--dry-run",
                action="store_true",
                help="estimate the teacher's calls, tokens and cost from a sample of the "
                "data (a stand-in answers; nothing is sent or written), then stop",
            )
            p.add_argument(
                "--reset-traces",
                action="store_true",
                help="move the run's traces aside (traces/traces.<time>.jsonl, never deleted) "
                "and run the teacher again; replies it gave before come from the cache",
            )
    serve = sub.add_parser(
        "serve",
        help="serve a run's student over an OpenAI-compatible HTTP API",
        description="serve a run's student (or one adapter) over an OpenAI-compatible HTTP API",
    )
    convert = sub.add_parser(
        "convert",
        help="convert a .gguf model file into a transformers checkpoint folder",
        description="convert a .gguf model file into a save_pretrained folder (weights "
        "dequantized to fp32, tokenizer, chat template); a recipe's student.model may also "
        "name the .gguf file directly, which converts it once into a cache",
    )
    convert.add_argument("gguf", type=Path, help="the .gguf file")
    convert.add_argument(
        "--out", type=Path, default=None, help="the folder to write (default: the GGUF cache)"
    )
    export = sub.add_parser(
        "export",
        help="write a run's student as one merged checkpoint folder",
        description="write the student of a run (or of one adapter folder) with its adapter "
        "folded into the base model's weights, as a save_pretrained folder that transformers "
        "and vLLM load without an adapter",
    )
    export.add_argument("target", type=Path, help="a run directory, or an adapter folder")
    export.add_argument(
        "--merged", type=Path, required=True, metavar="DIR", help="the folder to write (new)"
    )
    export.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow a base model trained with student.trust_remote_code to run its own code "
        "while it is merged (refused without this flag)",
    )
    export.add_argument(
        "--adapter",
        default=None,
        metavar="NAME",
        help="which adapter of the run, when it has several (dataset.multitask: false)",
    )
    try:
        from apprentice.serve.cli import add_serve_arguments
    except ImportError:  # the serving extra is optional
        serve.set_defaults(serve_missing=True)
    else:
        add_serve_arguments(serve)
    return parser


def _summary(outcomes) -> str:
    rows = [("stage", "status", "time", "result")]
    for o in outcomes:
        rows.append((o.stage, o.status, f"{o.seconds:.1f}s", _short(o.stage, o.summary)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=True)) + "  " + row[3]
        for row in rows
    ]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


def _short(stage: str, s: dict) -> str:
    if not s:
        return ""
    if stage == "bootstrap":
        cost = s.get("teacher_cost_usd")
        cost_text = f", teacher ${cost:.4f} so far" if cost else ""
        new = f" ({s.get('skipped')} traced before)" if s.get("skipped") else ""
        return (
            f"{s.get('passing')}/{s.get('traces')} traces pass{new}, "
            f"{s.get('failed_traces')} failed{cost_text}"
        )
    if stage == "dataset":
        counts = s.get("counts", {})
        text = ", ".join(f"{k} {sum(v.values())} rows" for k, v in counts.items())
        long = {k: n for k, n in (s.get("too_long") or {}).items() if n}
        if long:
            text += "; too long for the student (training drops them): " + ", ".join(
                f"{k} {n}" for k, n in long.items()
            )
        return text
    if stage == "train":
        return ", ".join(
            f"{name}: {v.get('method')} val loss {v.get('final_val_loss') or float('nan'):.4f}"
            for name, v in s.items()
        )
    if stage == "bind":
        return f"{s.get('backend')}: {s.get('program')}"
    if stage == "optimize":
        steps = ", ".join(f"{step['step']} {step['score']:.3f}" for step in s.get("steps", []))
        return f"{s.get('strategy')} on {s.get('valset')} held out: {steps}; kept {s.get('kept')}"
    if stage == "eval":
        return ", ".join(f"{k} {v:.3f}" for k, v in s.items())
    if stage == "report":
        return s.get("report", "")
    return ""


def _run_stage(args) -> int:
    from apprentice.run import STAGES, Run, locate
    from apprentice.tracing import export_spans

    if getattr(args, "dry_run", False):
        from apprentice.estimate import estimate_teacher

        recipe, root = locate(args.target, args.overrides, args.run_dir)
        print(estimate_teacher(recipe, root).text())
        return 0

    overrides = args.overrides + _launcher_overrides(args)
    run = Run.open(
        args.target,
        overrides=overrides,
        run_dir=args.run_dir,
        progress=not args.quiet,
        allow_key_hosts=tuple(args.allow_key_hosts),
        reset_traces=getattr(args, "reset_traces", False),
    )
    tracing = _tracing(args, run.recipe.tracing) if args.command in TRACED else None
    start = time.perf_counter()
    with export_spans(tracing, default_path=run.root / "spans.jsonl"):
        if args.command == "distill":
            run.distill()
        else:
            getattr(run, args.command)()
            if args.command == "train":  # a trained student is bound, as before bind was a stage
                run.bind()
    print()
    print(_summary(run.outcomes))
    done = {o.stage for o in run.outcomes}
    if "report" in done:
        report = run.outcomes[-1].summary.get("report")
        print(f"\nreport: {report}")
    elif args.command in STAGES:
        print(f"\nrun directory: {run.root}")
    print(f"total {time.perf_counter() - start:.1f}s")
    return 0


def _adapter_folder(target: Path, name: str | None) -> Path:
    """The adapter folder ``target`` names (what ``apprentice serve`` finds there: itself,
    a run's one adapter, or its full finetune), ``name`` choosing among a run's several."""
    from apprentice.serve.servable import find_servable

    missing = (
        f"{target} is neither an adapter folder nor a run directory with a trained adapter: "
        "run `apprentice train` first, or give the adapter's folder"
    )
    try:
        servable = find_servable(target)
    except FileNotFoundError:
        raise FileNotFoundError(missing) from None
    found = dict(servable.adapters)
    if not found and (Path(servable.base_model) / "manifest.json").is_file():
        found = {servable.name: Path(servable.base_model)}  # a full finetune
    if not found:
        raise FileNotFoundError(missing)
    if name is not None:
        if name not in found:
            raise ValueError(f"{target} has no adapter {name!r}; it has {sorted(found)}")
        return found[name]
    if len(found) > 1:
        raise ValueError(f"{target} has adapters {sorted(found)}: choose one with --adapter NAME")
    return next(iter(found.values()))


def main(argv: list[str] | None = None) -> int:
    # Like `python -m`, the command imports from the working directory: recipes name their
    # program modules relative to the project root it runs from. The command owns its
    # process, so this is set here, never by library code a user's program calls.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.debug:
        # Printed at every checkpoint of a model with tied embeddings, which is expected.
        logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
    try:
        if args.command == "serve":
            if getattr(args, "serve_missing", False):
                raise RuntimeError("serving is not available: install apprentice[train]")
            from apprentice.serve.cli import run_serve

            return run_serve(args)
        if args.command == "export":
            from apprentice.train.export import export_merged

            folder = _adapter_folder(args.target, args.adapter)
            print(export_merged(folder, args.merged, trust_remote_code=args.trust_remote_code))
            return 0
        if args.command == "convert":
            from apprentice.gguf import convert_gguf

            print(convert_gguf(args.gguf, args.out))
            return 0
        if args.command == "eval" and args.data is not None:
            return _eval_program_file(args)
        return _run_stage(args)
    except KeyboardInterrupt:
        print("apprentice: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"apprentice: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
