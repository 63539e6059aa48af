"""Report: teacher vs students on a held-out set, as report.md with PNG plots.

``evaluate_system`` runs one system (a program bound to its LMs) through Evaluate while
capturing the steps of every run, and condenses them into a SystemEval: the metric,
per-predictor step accuracy, latency, tokens per call and cost. A SystemEval is saved as
JSON, so ``write_report`` can be re-run alone from those files.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from apprentice.evaluate.evaluate import Evaluate, EvaluationResult
from apprentice.evaluate.metrics import exact_match
from apprentice.evaluate.plots import plot_loss, plot_quality_cost, read_train_log
from apprentice.example import Example
from apprentice.formats.values import to_jsonable
from apprentice.lm.usage import Price
from apprentice.module import Module
from apprentice.settings import settings
from apprentice.traces.capture import Step

__all__ = [
    "PredictorStats",
    "SystemEval",
    "evaluate_system",
    "headline",
    "results_table",
    "write_report",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


@dataclass
class PredictorStats:
    """One predictor's calls. ``labelled``: the calls whose output fields include label
    fields of the example; ``correct``: those whose outputs match all those labels."""

    calls: int = 0
    labelled: int = 0
    correct: int = 0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None


@dataclass
class SystemEval:
    """One system on the held-out set. Latency is per program run (one example); token
    means are per LM call that got a reply; cost is at list price, cached calls included.
    ``priced`` is False when no call had a price table (a local model: reported as $0)."""

    name: str
    score: float
    n: int
    errors: int
    latency_p50_s: float | None  # None: no run returned (every example failed)
    latency_p95_s: float | None
    lm_calls: int
    cached_calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    priced: bool
    predictors: dict[str, PredictorStats] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    # The per-example results of the run that made this record; not saved.
    result: EvaluationResult | None = field(default=None, repr=False, compare=False)

    @property
    def prompt_tokens_per_call(self) -> float:
        return self.prompt_tokens / self.lm_calls if self.lm_calls else 0.0

    @property
    def completion_tokens_per_call(self) -> float:
        return self.completion_tokens / self.lm_calls if self.lm_calls else 0.0

    @property
    def cost_per_1k(self) -> float:
        """Dollars per 1,000 examples."""
        return self.cost_usd / self.n * 1000 if self.n else 0.0

    @property
    def step_accuracy(self) -> dict[str, float | None]:
        return {path: stats.accuracy for path, stats in self.predictors.items()}

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "result"}
        data["predictors"] = {
            path: {**vars(stats), "accuracy": stats.accuracy}
            for path, stats in self.predictors.items()
        }
        return {"version": SCHEMA_VERSION, **data, "models": list(self.models)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SystemEval:
        data = dict(data)
        version = data.pop("version", None)
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"SystemEval schema version {version!r} is not supported (expected "
                f"{SCHEMA_VERSION}); re-run the evaluation to rewrite the file"
            )
        data["predictors"] = {
            path: PredictorStats(s["calls"], s["labelled"], s["correct"])
            for path, s in data.get("predictors", {}).items()
        }
        return cls(**data)

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> SystemEval:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} is not a SystemEval file: {exc}") from exc


# -- evaluating one system ------------------------------------------------------------


def _key(identity: Any) -> str:
    """An LM identity (a dict) as a hashable key of the price table."""
    return json.dumps(to_jsonable(dict(identity)), sort_keys=True, default=str)


def _lm_name(identity: dict[str, Any]) -> str:
    name = f"{identity.get('backend')}:{identity.get('model')}"
    name += f"+{identity['adapter']}" if identity.get("adapter") else ""
    return name + (f" ({identity['dtype']})" if identity.get("dtype") else "")


def _price_table(program: Callable[..., Any]) -> dict[str, Price]:
    """The price of each LM the program can reach: its predictors' LMs and the default."""
    lms = [p.lm for _, p in program.named_predictors()] if isinstance(program, Module) else []
    prices = {}
    for lm in [*lms, settings().lm]:
        price = getattr(getattr(lm, "usage", None), "price", None)
        if price is not None:
            prices[_key(lm.identity)] = price
    return prices


def _matches(value: Any, gold: Any) -> bool:
    if value is None:
        return False
    if to_jsonable(value) == to_jsonable(gold):
        return True
    try:  # normalized exact match; a list of gold strings means any of them
        return exact_match(str(value), gold) == 1.0
    except TypeError:  # a gold value that is not text
        return False


def _step_correct(step: Step, labels: dict[str, Any]) -> bool | None:
    """None when none of the step's output fields is a label of the example."""
    outputs = [f["name"] for f in step.signature["fields"] if f["kind"] == "output"]
    names = [name for name in outputs if name in labels]
    if not names:
        return None
    output = step.output
    return output is not None and all(_matches(output.get(n), labels[n]) for n in names)


def _percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def evaluate_system(
    name: str,
    program: Callable[..., Any],
    devset: Sequence[Example],
    metric: Callable[..., Any],
    *,
    num_threads: int = 8,
    price: Price | None = None,
    display_progress: bool = True,
) -> SystemEval:
    """Evaluates ``program`` on ``devset`` and records what the report shows.

    Cost uses ``price`` for every call when given, else the price table of the LM that
    answered (a predictor's own LM, or the configured default); an LM without one (a
    local student) costs nothing. Latency percentiles are over the runs that returned.
    """
    prices = _price_table(program)
    result = Evaluate(
        devset=devset,
        metric=metric,
        num_threads=num_threads,
        display_progress=display_progress,
        record_steps=True,
    )(program)

    predictors: dict[str, PredictorStats] = {}
    if isinstance(program, Module):
        predictors = {path: PredictorStats() for path, _ in program.named_predictors()}
    latencies: list[float] = []
    calls = cached = prompt_tokens = completion_tokens = 0
    cost, priced, models = 0.0, price is not None, set()
    for example_result in result.results:
        if example_result.steps is None:  # stopped before it ran (max_errors)
            continue
        if example_result.prediction is not None:
            latencies.append(example_result.latency_s)
        labels = example_result.example.labels().to_dict()
        for step in example_result.steps:
            stats = predictors.setdefault(step.predictor, PredictorStats())
            stats.calls += 1
            correct = _step_correct(step, labels)
            if correct is not None:
                stats.labelled += 1
                stats.correct += correct
            models.add(_lm_name(step.lm))
            if not step.completions:  # the call failed: no reply, no tokens
                continue
            calls += 1
            cached += step.cached
            prompt_tokens += step.prompt_tokens
            completion_tokens += step.completion_tokens
            step_price = price or prices.get(_key(step.lm))
            if step_price is not None:
                priced = True
                cost += step_price.cost(step.prompt_tokens, step.completion_tokens)
    return SystemEval(
        name=name,
        score=result.score,
        n=len(result.results),
        errors=result.errors,
        latency_p50_s=_percentile(latencies, 0.50) if latencies else None,
        latency_p95_s=_percentile(latencies, 0.95) if latencies else None,
        lm_calls=calls,
        cached_calls=cached,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_usd=cost,
        priced=priced,
        predictors=predictors,
        models=sorted(models),
        result=result,
    )


# -- the report -----------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _money(x: float) -> str:
    return "$0" if x == 0 else f"${x:,.0f}" if x >= 100 else f"${x:.3g}"


def _seconds(x: float | None) -> str:
    if x is None:
        return "n/a"  # no run returned: there is no latency to show, not a fast one
    return f"{x:.2f} s" if x >= 1 else f"{x * 1000:.3g} ms"


def _cost_cell(system: SystemEval) -> str:
    return _money(system.cost_per_1k) if system.priced else "local ($0)"


def headline(
    systems: Sequence[SystemEval],
    *,
    baseline: str = "teacher",
    candidate: str = "student (trained)",
) -> str:
    """One sentence: how much of the baseline's metric the candidate keeps, at what cost."""
    by_name = {s.name: s for s in systems}
    missing = [name for name in (baseline, candidate) if name not in by_name]
    if missing:
        return (
            f"No headline: no system named {' or '.join(repr(m) for m in missing)} "
            f"(systems: {', '.join(repr(s.name) for s in systems) or 'none'})."
        )
    ref, new = by_name[baseline], by_name[candidate]
    if ref.score:
        quality = f"keeps {_pct(new.score / ref.score)} of **{baseline}**'s metric"
    else:
        quality = f"scores {new.score:.3f} where **{baseline}** scores 0"
    quality += f" ({new.score:.3f} vs {ref.score:.3f})"
    costs = f"{_money(new.cost_per_1k)} vs {_money(ref.cost_per_1k)} per 1k examples"
    if ref.cost_per_1k > 0:
        cost = f"at {_pct(new.cost_per_1k / ref.cost_per_1k)} of its cost ({costs})"
    else:
        cost = f"at {costs}"
    sentence = f"**{candidate}** {quality} {cost}"
    if (ref.latency_p50_s or 0) > 0 and (new.latency_p50_s or 0) > 0:
        ratio = ref.latency_p50_s / new.latency_p50_s
        which = f"{ratio:.1f}x lower" if ratio >= 1 else f"{1 / ratio:.1f}x higher"
        sentence += (
            f", {which} p50 latency "
            f"({_seconds(new.latency_p50_s)} vs {_seconds(ref.latency_p50_s)})"
        )
    return sentence + "."


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|")


def results_table(systems: Sequence[SystemEval], baseline: str | None = None) -> str:
    """The report's results table as markdown (``baseline``: default the first system)."""
    return "\n".join(_table(systems, baseline or systems[0].name))


def _table(systems: Sequence[SystemEval], baseline: str) -> list[str]:
    ref = next((s for s in systems if s.name == baseline), None)
    paths = list(dict.fromkeys(p for s in systems for p in s.predictors))
    header = ["system", "metric", f"% of {baseline}"]
    header += [f"step acc: {p}" for p in paths]
    header += ["p50 latency", "p95 latency", "tokens/call (in / out)", "cost / 1k examples"]
    header += ["n (errors)"]
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    for s in systems:
        share = _pct(s.score / ref.score) if ref is not None and ref.score else "—"
        steps = [s.step_accuracy.get(p) for p in paths]
        row = [s.name, f"{s.score:.3f}", share]
        row += ["—" if acc is None else _pct(acc) for acc in steps]
        row += [_seconds(s.latency_p50_s), _seconds(s.latency_p95_s)]
        row += [f"{s.prompt_tokens_per_call:.1f} / {s.completion_tokens_per_call:.1f}"]
        row += [_cost_cell(s), f"{s.n} ({s.errors})"]
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return lines


def _training_section(out_dir: Path, train_logs: dict[str, Path] | None) -> list[str]:
    lines = ["## Training", ""]
    curves, notes = {}, []
    for label, given in (train_logs or {}).items():
        path = Path(given)
        path = path / "train_log.jsonl" if path.is_dir() else path
        if not path.is_file():
            notes.append(f"- {label}: no training log at `{path}`")
            continue
        curves[label] = read_train_log(path)
    curves = {label: c for label, c in curves.items() if c[0] or c[1]}
    if not curves:
        lines.append("No training logs: the loss curve is skipped.")
        return [*lines, *notes, ""]
    plot_loss(out_dir / "loss.png", curves)
    lines += ["![training and validation loss](loss.png)", ""]
    lines += ["| adapter | steps | final train loss | best val loss |", "|---|---|---|---|"]
    for label, (train, val) in curves.items():
        steps = max(step for step, _ in train + val)
        final = f"{train[-1][1]:.4f}" if train else "—"
        best = f"{min(v for _, v in val):.4f}" if val else "—"
        lines.append(f"| {_cell(label)} | {steps} | {final} | {best} |")
    return [*lines, *notes, ""]


def _optimize_section(result: dict[str, Any], systems: Sequence[SystemEval]) -> list[str]:
    """BetterTogether's steps: each program's score on the held-out training examples, the
    teacher calls and wall time the step took, and which program was kept."""
    lines = [f"## Optimize: BetterTogether `{result['strategy']}`", ""]
    names = {"start": "start", "p": result["prompt_optimizer"], "w": result["weight_optimizer"]}
    lines += [
        "| step | optimizer | valset score | teacher calls (cached) | wall time | kept |",
        "|---|---|---|---|---|---|",
    ]
    for step in result["steps"]:
        calls = step.get("teacher_calls")
        cached = step.get("teacher_cached_calls")
        call_text = "—" if calls is None else f"{calls} ({cached})"
        row = [
            f"{step['index']}: {step['step']}",
            names.get(step["step"], step["step"]),
            f"{step['score']:.3f}",
            call_text,
            _seconds(step["seconds"]) if step["step"] != "start" else "—",
            "yes" if step["index"] == result["kept"] else "",
        ]
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    final = next((s for s in systems if s.name == "student (BetterTogether)"), None)
    lines += [
        "",
        f"Each step starts from the previous step's program; every program is scored on "
        f"{result['valset']} training examples held out of the {result['trainset']} the "
        "steps learn from, and the best is kept (the earlier step on a tie). Teacher calls: "
        "answered by the teacher (from its cache); wall time: the step's optimizer, its "
        "scoring not included.",
    ]
    if final is not None:
        lines.append(
            f"The kept program scores **{final.score:.3f}** on the {final.n} held-out dev "
            "examples (system `student (BetterTogether)` above)."
        )
    return [*lines, ""]


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(to_jsonable(value), ensure_ascii=False)
    return str(value)


def write_report(
    out_dir: str | Path,
    systems: Sequence[SystemEval],
    *,
    train_logs: dict[str, Path] | None = None,
    title: str = "apprentice: teacher vs student",
    extra: dict[str, Any] | None = None,
    baseline: str = "teacher",
    candidate: str = "student (trained)",
    optimize: dict[str, Any] | None = None,
) -> Path:
    """Writes ``out_dir/report.md``, ``quality_cost.png`` and (given training logs, as
    ``train_log.jsonl`` files or the adapter directories holding them) ``loss.png``.
    ``optimize``: a run's ``optimize/result.json`` (BetterTogether's steps), shown as a
    table of every step's score, teacher calls and wall time."""
    if not systems:
        raise ValueError("write_report needs at least one SystemEval, got none")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = max(s.n for s in systems)
    lines = [f"# {title}", "", headline(systems, baseline=baseline, candidate=candidate), ""]
    lines += _table(systems, baseline)
    lines += [
        "",
        f"Metric: mean over {n} held-out examples (failed examples score 0). Step accuracy: "
        "per predictor, the share of calls whose outputs equal the example's labels of the "
        "same name (normalized exact match); — where no output field is labelled. Latency: "
        "wall time of one program run. Tokens: per LM call. Cost: each LM's price table "
        "(USD per million tokens) over all calls, cached ones included; local = no price "
        "table.",
        "",
        "Models: " + "; ".join(f"{s.name}: {', '.join(s.models) or '—'}" for s in systems),
        "",
        "![quality and cost per system](quality_cost.png)",
        "",
    ]
    plot_quality_cost(
        out_dir / "quality_cost.png",
        [s.name for s in systems],
        [s.score for s in systems],
        [s.cost_per_1k for s in systems],
        [_cost_cell(s) for s in systems],
    )
    if optimize is not None:
        lines += _optimize_section(optimize, systems)
    lines += _training_section(out_dir, train_logs)
    if extra:
        lines += ["## Run", ""]
        lines += [f"- {key}: {_value(value)}" for key, value in extra.items()]
        lines.append("")
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    log.info("wrote %s", path)
    return path
