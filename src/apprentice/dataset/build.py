"""Traces -> SFT dataset: keep the steps of passing traces, render them with the program's
own format, dedup, split by example, and save as HF ``datasets`` with a manifest.

Each row is rendered from the step's parsed outputs through the same format (and the
student program's own signature and demos) that the program uses at inference, so the
student learns exactly the prompt it will see and always the clean completion layout.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from apprentice.formats.base import Format
from apprentice.formats.prompt import PromptTemplate
from apprentice.module import Module
from apprentice.predict.predict import default_format
from apprentice.traces.bootstrap import passes
from apprentice.traces.capture import Trace
from apprentice.traces.store import TraceStore

__all__ = ["DatasetManifest", "build_dataset", "load_dataset_dir", "read_dataset_manifest"]

log = logging.getLogger(__name__)

SCHEMA = "apprentice.dataset"
VERSION = 1


@dataclass
class DatasetManifest:
    trace_store_hash: str
    format: str
    format_version: int
    multitask: bool
    predictors: list[str]
    counts: dict[str, dict[str, int]]  # split -> predictor -> rows
    drops: dict[str, int]  # reason -> steps or traces dropped
    threshold: float | None
    val_fraction: float
    seed: int
    content_hash: str = ""
    # The chat template and its variables (the date fixed at build time) that causal
    # students are trained and served with: formats.prompt.PromptTemplate.to_config().
    template: dict[str, Any] = field(default_factory=dict)
    # Rows too long for the student, per split (``student_prompt.length_check``): training
    # drops them. ``{"checked": False, "why": ...}`` where they could not be counted here.
    lengths: dict[str, Any] = field(default_factory=dict)
    schema: str = SCHEMA
    version: int = VERSION
    created: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def total(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())


def _split_of(example_id: str, seed: int, val_fraction: float) -> str:
    digest = hashlib.sha256(f"{seed}:{example_id}".encode()).digest()
    return "validation" if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else "train"


def _rows(
    traces: Iterable[Trace],
    program: Module,
    fmt: Format,
    threshold: float | None,
    drops: Counter,
) -> Iterable[tuple[tuple[str, int], dict[str, Any]]]:
    predictors = dict(program.named_predictors())
    order = {path: i for i, path in enumerate(predictors)}
    for trace in traces:
        if not trace.ok:
            drops["failed trace"] += 1
            continue
        if not passes(trace, threshold):
            drops["score below threshold"] += 1
            continue
        for step in trace.steps:
            if step.rejected:  # thrown away by an Assert/Suggest re-run or BestOfN
                drops["rejected attempt"] += 1
                continue
            predictor = predictors.get(step.predictor)
            if predictor is None:
                drops["predictor not in program"] += 1
                continue
            if step.error is not None or step.output is None:
                drops["step failed to parse"] += 1
                continue
            inputs = {n: step.inputs.get(n) for n in predictor.signature.input_fields}
            if any(v is None for v in inputs.values()):
                drops["step lacks an input of the signature"] += 1
                continue
            if any(n not in step.output for n in predictor.signature.output_fields):
                drops["step lacks an output of the signature"] += 1
                continue
            row = fmt.render_sft(predictor.signature, predictor.demos, inputs, step.output)
            yield (
                (trace.example_id, order[step.predictor]),
                {
                    "example_id": trace.example_id,
                    "predictor": step.predictor,
                    "messages": row.messages,
                    "completion": row.completion,
                },
            )


def build_dataset(
    store: TraceStore | str | os.PathLike,
    program: Module,
    out_dir: str | os.PathLike,
    *,
    threshold: float | None = None,
    multitask: bool = True,
    val_fraction: float = 0.1,
    seed: int = 0,
    format: Format | None = None,
    template: PromptTemplate | None = None,
    lengths: Callable[[dict[str, list[dict[str, Any]]], PromptTemplate], dict[str, Any]]
    | None = None,
) -> DatasetManifest:
    """Writes ``out_dir/data`` (a DatasetDict: train, validation) and ``out_dir/manifest.json``.

    Rows carry ``example_id``, ``predictor``, ``messages`` and ``completion``; with
    ``multitask=False`` each predictor is trained apart by filtering on ``predictor``.
    Steps of one example always land in the same split. ``template`` (default: the
    tokenizer's own chat template) is recorded with today's date as its ``date_string``
    unless it names one: a template that writes a date (Llama 3.x) writes this one, in
    training and when the student is served. ``lengths(splits, template)`` counts the rows
    too long for the student (``student_prompt.length_check``) into the manifest.

    The dataset is written into a new folder beside ``out_dir`` and switched in by renames
    once complete, so a build killed half-way leaves the previous dataset whole (or, killed
    between the two renames, none), never new splits beside old ones or an old manifest
    over new rows.
    """
    from datasets import Dataset, DatasetDict

    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    store = store if isinstance(store, TraceStore) else TraceStore(store)
    if not store.file.exists():
        raise FileNotFoundError(f"no traces at {store.file}: run the bootstrap stage first")
    fmt = format or default_format()
    if fmt.name == "baked" and multitask:
        _check_baked_steps_differ(program)
    drops: Counter = Counter()
    splits: dict[str, list[dict[str, Any]]] = defaultdict(list)
    # Rows are sorted by example id (then predictor order) before dedup, so the dataset does
    # not depend on the order concurrent teacher runs happened to finish in the store.
    seen: set[str] = set()
    for _, row in sorted(_rows(store, program, fmt, threshold, drops), key=lambda kv: kv[0]):
        key = hashlib.sha256(
            json.dumps(
                [row["predictor"], row["messages"], row["completion"]], sort_keys=True
            ).encode()
        ).hexdigest()
        if key in seen:
            drops["duplicate"] += 1
            continue
        seen.add(key)
        splits[_split_of(row["example_id"], seed, val_fraction)].append(row)
    if not splits:
        raise ValueError(
            f"no training rows from {store.file}: every trace was dropped ({dict(drops)}); "
            "check the teacher, the metric and the threshold"
        )
    if val_fraction > 0 and not splits["validation"] and len(splits["train"]) > 1:
        # Tiny datasets: move one example's rows so validation loss can be computed.
        moved = splits["train"][-1]["example_id"]
        splits["validation"] = [r for r in splits["train"] if r["example_id"] == moved]
        splits["train"] = [r for r in splits["train"] if r["example_id"] != moved]
    out_dir = Path(out_dir)
    building = _sibling(out_dir, "building")
    _remove(building)  # a build that was killed earlier
    columns = ["example_id", "predictor", "messages", "completion"]
    data = DatasetDict(
        {
            name: Dataset.from_list(splits.get(name, []))
            if splits.get(name)
            else Dataset.from_dict({c: [] for c in columns})
            for name in ("train", "validation")
        }
    )
    # An empty split would otherwise be written as zero shards, which load_from_disk rejects.
    data.save_to_disk(str(building / "data"), num_shards={n: 1 for n in data})
    counts = {
        name: dict(sorted(Counter(r["predictor"] for r in splits.get(name, [])).items()))
        for name in ("train", "validation")
    }
    template = template or PromptTemplate()
    if "date_string" not in dict(template.variables):
        variables = (*template.variables, ("date_string", time.strftime("%d %b %Y")))
        template = PromptTemplate(template.chat_template, tuple(sorted(variables)))
    # The template is part of what is trained: another date is another dataset.
    content = hashlib.sha256(
        json.dumps(
            {n: splits.get(n, []) for n in ("train", "validation")} | {"t": template.to_config()},
            sort_keys=True,
        ).encode()
    ).hexdigest()[:16]
    manifest = DatasetManifest(
        trace_store_hash=store.content_hash()[:16],
        format=fmt.name,
        format_version=fmt.version,
        multitask=multitask,
        predictors=[path for path, _ in program.named_predictors()],
        counts=counts,
        drops=dict(drops),
        threshold=threshold,
        val_fraction=val_fraction,
        seed=seed,
        content_hash=content,
        template=template.to_config(),
        lengths=lengths({n: splits.get(n, []) for n in ("train", "validation")}, template)
        if lengths is not None
        else {},
    )
    (building / "manifest.json").write_text(json.dumps(manifest.to_dict(), indent=2))
    _switch(building, out_dir)
    log.info("dataset: %s rows %s, dropped %s", out_dir, counts, dict(drops))
    return manifest


def _check_baked_steps_differ(program: Module) -> None:
    """One adapter learns every predictor's rows: in the baked format (no instructions) two
    predictors that read and write the same field names under other instructions would get
    the same prompt for different tasks."""
    from apprentice.formats.baked import layout_key

    seen: dict[Any, tuple[str, str]] = {}
    for path, predictor in program.named_predictors():
        key = layout_key(predictor.signature)
        instructions = predictor.signature.instructions
        first, first_instructions = seen.setdefault(key, (path, instructions))
        if first_instructions != instructions:
            raise ValueError(
                f"predictors {first!r} and {path!r} read {list(key[0])} and write "
                f"{list(key[1])} under other instructions: in the baked format (no "
                "instructions in the prompt) one adapter cannot tell them apart; train one "
                "adapter per predictor (dataset.multitask: false) or use the chat format"
            )


def _sibling(out_dir: Path, what: str) -> Path:
    return out_dir.parent / f".{out_dir.name}.{what}"


def _remove(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


def _switch(building: Path, out_dir: Path) -> None:
    """Puts the finished ``building`` folder at ``out_dir``: each rename is atomic, and the
    old dataset is deleted only once the new one is in place."""
    old = _sibling(out_dir, "old")
    _remove(old)
    if out_dir.exists():
        os.rename(out_dir, old)
    os.rename(building, out_dir)
    _remove(old)


def load_dataset_dir(path: str | os.PathLike) -> tuple[Any, DatasetManifest]:
    """Reads what ``build_dataset`` wrote: (DatasetDict, manifest)."""
    from datasets import load_from_disk

    manifest = read_dataset_manifest(path)
    return load_from_disk(str(Path(path) / "data")), manifest


def read_dataset_manifest(path: str | os.PathLike) -> DatasetManifest:
    """The manifest ``build_dataset`` wrote, without loading the rows."""
    path = Path(path)
    manifest_file = path / "manifest.json"
    if not manifest_file.exists():
        raise FileNotFoundError(
            f"{path} is not a dataset directory (no manifest.json); run the dataset stage"
        )
    data = json.loads(manifest_file.read_text())
    if data.get("schema") != SCHEMA:
        raise ValueError(f"{manifest_file} is not an apprentice dataset manifest")
    if data.get("version", 0) > VERSION:
        raise ValueError(
            f"{manifest_file} has version {data['version']}; this apprentice reads up to {VERSION}"
        )
    return DatasetManifest(**data)
