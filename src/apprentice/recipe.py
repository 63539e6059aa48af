"""Recipe YAML <-> typed config: what to distil, from which data and teacher, into which student.

A recipe names the program, the metric and any script by import path (``pkg.mod:Name``),
reads data from JSONL, CSV or a HF ``datasets`` directory (or a Python factory for
synthetic tasks), and carries the teacher, student, LoRA, training, serving and
evaluation sections (``recipe_sections.py``). Unknown keys are rejected with the closest valid key suggested;
``--set train.epochs=3`` style overrides are applied before validation.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import importlib
import json
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from apprentice.config import ConfigSection
from apprentice.recipe_sections import (
    BootstrapConfig,
    DataConfig,
    DatasetConfig,
    DataSource,
    EvalConfig,
    OptimizeConfig,
    ServeConfig,
    StudentConfig,
    TeacherConfig,
    TracingConfig,
)
from apprentice.train.config import LoraConfig, TrainConfig

__all__ = [
    "DataSource",
    "Recipe",
    "RecipeError",
    "apply_overrides",
    "import_object",
    "load_recipe",
]


class RecipeError(ValueError):
    """A recipe that cannot be used; the message is one line naming the bad value."""


class Recipe(ConfigSection):
    name: str = Field(description="short name; the default run directory is runs/<name>")
    program: str = Field(description="import path of the Module class, pkg.mod:Class")
    program_args: dict[str, Any] = Field(default_factory=dict)
    metric: str = Field(description="import path of metric(example, prediction, trace=None)")
    data: DataConfig
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig
    bootstrap: BootstrapConfig = BootstrapConfig()
    dataset: DatasetConfig = DatasetConfig()
    lora: LoraConfig = LoraConfig()
    train: TrainConfig = TrainConfig()
    serve: ServeConfig = ServeConfig()
    eval: EvalConfig = EvalConfig()
    optimize: OptimizeConfig | None = Field(
        None,
        description="BetterTogether: prompt and weight steps composed by a strategy string, "
        "after the plain distillation (apprentice optimize); absent: no such stage",
    )
    tracing: TracingConfig | None = Field(
        None,
        description="OpenTelemetry spans of every program run of bootstrap, optimize and eval "
        "(tracing.py): {exporter: otlp | jsonl | console, ...}; absent: no spans",
    )
    run_dir: str | None = Field(None, description="default: runs/<name> beside the recipe's cwd")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        # The default run directory is runs/<name>: a name with a path in it would escape runs/.
        if not _NAME.fullmatch(name):
            raise ValueError(
                "must be a plain folder name (letters, digits, '.', '_', '-'; not "
                "starting with '.'): the default run directory is runs/<name>"
            )
        return name

    def check_data_files(self) -> None:
        """Refuses, before any stage runs, a data file that is not there (``data.dev`` is
        otherwise first read after training)."""
        for split in ("train", "dev"):
            source = getattr(self.data, split)
            if source.path is not None and not Path(source.path).exists():
                raise RecipeError(
                    f"data.{split}.path: {source.path!r} does not exist (relative paths are "
                    f"read from the working directory, {os.getcwd()})"
                )

    def section_hash(self, *names: str) -> str:
        data = self.model_dump(mode="json")
        blob = json.dumps({n: data[n] for n in names}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # -- objects named by the recipe ----------------------------------------------------------
    def make_program(self):
        from apprentice.module import Module

        cls = import_object(self.program, "program")
        program = cls(**self.program_args) if isinstance(cls, type) else cls
        if not isinstance(program, Module):
            raise RecipeError(f"program {self.program!r} is not an apprentice Module class")
        return program

    def make_metric(self):
        metric = import_object(self.metric, "metric")
        if not callable(metric):
            raise RecipeError(f"metric {self.metric!r} is not callable")
        return metric

    def make_teacher(
        self,
        *,
        cache_dir: str | os.PathLike | None = None,
        allow_key_hosts: tuple[str, ...] = (),
        config: TeacherConfig | None = None,
        where: str = "teacher",
    ):
        """The teacher LM (or another LM configured like it: ``config``, found in the recipe
        at ``where``). An ``openai`` LM whose ``base_url`` is neither a known provider's API
        nor this machine is refused unless its host is in ``allow_key_hosts`` or
        ``$APPRENTICE_ALLOW_KEY_HOSTS``: the recipe must not send a key elsewhere silently."""
        from apprentice.lm.usage import Price

        t = config or self.teacher
        price = Price(**t.price) if t.price else None
        cache: Any = str(Path(cache_dir) / "teacher.sqlite") if cache_dir is not None else False
        if t.backend == "scripted":
            from apprentice.lm.scripted import ScriptedLM

            return ScriptedLM(import_object(t.script, f"{where}.script"), price=price, cache=cache)
        from apprentice.lm.key_hosts import key_host_refusal
        from apprentice.lm.openai import OpenAILM

        if t.base_url is not None:  # None: the user's own $OPENAI_BASE_URL, else OpenAI's
            refusal = key_host_refusal(t.base_url, t.api_key_env, allow_key_hosts)
            if refusal:
                raise RecipeError(refusal)
        key = os.environ.get(t.api_key_env)
        if not key:
            raise RecipeError(
                f"{where}.api_key_env: environment variable {t.api_key_env} is not set; export "
                "the endpoint's API key there"
            )
        return OpenAILM(
            t.model,
            base_url=t.base_url,
            api_key=key,
            model_type=t.model_type,
            concurrency=t.concurrency,
            price=price,
            cache=cache,
            temperature=t.temperature,
            max_tokens=t.max_tokens,
            extra_body=t.extra_body,
        )

    def load_split(self, name: Literal["train", "dev"], base: Path | None = None) -> list:
        return load_examples(getattr(self.data, name), self.data.inputs, base=base)


# -- loading -----------------------------------------------------------------------------------


def import_object(path: str, what: str) -> Any:
    """``pkg.mod:Name`` (or ``pkg.mod.Name``) -> the object, with a one-line error."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise RecipeError(f"{what}: {path!r} is not an import path like 'package.module:Name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RecipeError(
            f"{what}: cannot import module {module_name!r} ({exc}); run from the directory that "
            "holds it (the apprentice command and `python -m` import from there) or put it on "
            "PYTHONPATH"
        ) from None
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        names = [n for n in dir(module) if not n.startswith("_")]
        close = difflib.get_close_matches(attr, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise RecipeError(f"{what}: module {module_name!r} has no {attr!r}{hint}") from None
    return obj


def load_examples(source: DataSource, inputs: list[str], base: Path | None = None) -> list:
    from apprentice.example import Example

    if source.factory:
        made = import_object(source.factory, "data factory")(**source.args)
        rows = [dict(e) if not isinstance(e, Example) else e.to_dict() for e in made]
    else:
        path = Path(source.path)
        if not path.is_absolute() and base is not None and not path.exists():
            path = base / path
        rows = _read_rows(path, source.split)
    if source.limit is not None:
        rows = rows[: source.limit]
    if not rows:
        raise RecipeError(f"data: {source.path or source.factory} holds no examples")
    missing = [f for f in inputs if f not in rows[0]]
    if missing:
        raise RecipeError(
            f"data: input field(s) {missing} are not in {source.path or source.factory}; "
            f"its fields: {sorted(rows[0])}"
        )
    return [Example(**row).with_inputs(*inputs) for row in rows]


def _read_rows(path: Path, split: str | None) -> list[dict[str, Any]]:
    if not path.exists():
        raise RecipeError(f"data: file {str(path)!r} does not exist")
    if path.is_dir():
        from datasets import DatasetDict, load_from_disk

        try:
            data = load_from_disk(str(path))
        except Exception as exc:  # datasets raises several kinds for a non-dataset directory
            raise RecipeError(
                f"data: {str(path)!r} is not a HF datasets directory ({exc})"
            ) from None
        if isinstance(data, DatasetDict):
            if split not in data:
                raise RecipeError(
                    f"data: {str(path)!r} is a DatasetDict; set split to one of {list(data)}"
                )
            data = data[split]
        return [dict(r) for r in data]
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        with path.open() as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise RecipeError(f"data: {path}:{n} is not JSON ({exc.msg})") from None
        return rows
    if suffix == ".json":
        rows = json.loads(path.read_text())
        if not isinstance(rows, list):
            raise RecipeError(f"data: {path} must hold a JSON list of objects")
        return rows
    if suffix == ".csv":
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    raise RecipeError(f"data: {path} has suffix {suffix!r}; use .jsonl, .json, .csv or a directory")


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``["train.epochs=3", "teacher.model=gpt-4o"]`` -> a new nested dict. Values are YAML."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"--set {item!r}: write it as section.key=value")
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise RecipeError(f"--set {item!r}: {part!r} is a value, not a section")
            node = child
        try:
            node[parts[-1]] = read_yaml(raw, f"--set {key.strip()}")
        except yaml.YAMLError:
            node[parts[-1]] = raw
    return data


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# A recipe is a few hundred values; aliases may repeat a block, not multiply it a million
# times (the "billion laughs" shape: 400 bytes that expand to 10^9 values).
MAX_YAML_VALUES = 100_000


def read_yaml(text: str, what: str) -> Any:
    """``yaml.safe_load`` that refuses, before building anything, a document whose aliases
    expand to more than ``MAX_YAML_VALUES`` values (counted over the composed node graph,
    each shared node once, so the count itself is cheap)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {}, set())
        if size > MAX_YAML_VALUES:
            raise RecipeError(
                f"{what}: its YAML aliases expand to more than {MAX_YAML_VALUES:,} values; "
                "write the values out, or use fewer nested aliases"
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_: set[int]) -> int:
    """How many values ``node`` becomes once every alias is copied out (capped just above the
    bound). A node inside itself counts once here; ``_circular_key`` names it later."""
    if isinstance(node, yaml.ScalarNode):
        return 1
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_:
        return 1
    open_.add(id(node))
    children = (
        [part for pair in node.value for part in pair]
        if isinstance(node, yaml.MappingNode)
        else node.value
    )
    total = 1
    for child in children:
        total += _expanded_size(child, sizes, open_)
        if total > MAX_YAML_VALUES:
            break
    open_.discard(id(node))
    sizes[id(node)] = total
    return total


def load_recipe(path: str | os.PathLike, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    if not path.exists():
        raise RecipeError(f"recipe {str(path)!r} does not exist")
    try:
        data = read_yaml(path.read_text(), f"recipe {path}")
    except yaml.YAMLError as exc:
        raise RecipeError(
            f"recipe {path} is not valid YAML: {' '.join(str(exc).split())}"
        ) from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {path} must be a mapping of sections, got {type(data).__name__}")
    loop = _circular_key(data)
    if loop is not None:
        raise RecipeError(
            f"recipe {path}: {loop} refers to itself (a circular YAML anchor/alias); write the "
            "value out instead"
        )
    return validate_recipe(apply_overrides(data, overrides or []), source=str(path))


def validate_recipe(data: dict[str, Any], source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(f"{source}: {_first_error(exc)}") from None


def _circular_key(node: Any, where: str = "", parents: tuple[int, ...] = ()) -> str | None:
    """The dotted key at which a YAML alias points back to one of its own parents, or None."""
    if not isinstance(node, (dict, list)):
        return None
    if id(node) in parents:
        return where or "(top level)"
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, child in items:
        found = _circular_key(child, f"{where}.{key}" if where else str(key), (*parents, id(node)))
        if found:
            return found
    return None


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    loc, valid = _named_loc(Recipe, [str(p) for p in error["loc"]])
    where = ".".join(loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"
        return f"unknown key {where!r}{hint}"
    if error["type"] == "missing":
        return f"missing required key {where!r}"
    value = error.get("input")
    shown = f" (got {value!r:.80})" if not isinstance(value, dict) else ""
    return f"{where}: {error['msg'].removeprefix('Value error, ')}{shown}"


def _named_loc(model: type[BaseModel] | None, loc: list[str]) -> tuple[list[str], list[str]]:
    """(``loc`` as recipe keys, the valid keys beside its last one). Pydantic puts the tag of
    a tagged union (``optimize.prompt``'s ``gepa``) in the path; a recipe has no such key."""
    keys: list[str] = []
    parent: type[BaseModel] | None = model
    annotation: Any = None
    for part in loc:
        tagged = _tagged_models(annotation)
        if part in tagged:  # the tag: not a key, but it says which section follows
            model, annotation = tagged[part], None
            continue
        keys.append(part)
        parent = model
        field = model.model_fields.get(part) if model is not None else None
        annotation = getattr(field, "annotation", None)
        candidates = [annotation, *typing.get_args(annotation)]
        model = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
    return keys, list(parent.model_fields) if parent is not None else []


def _tagged_models(annotation: Any) -> dict[str, type[BaseModel]]:
    """tag -> model of a union written ``Annotated[Model, Tag("tag")] | ...``."""
    from pydantic import Tag

    found = {}
    for option in typing.get_args(annotation):
        args = typing.get_args(option)
        for meta in args[1:]:
            if isinstance(meta, Tag) and isinstance(args[0], type):
                found[meta.tag] = args[0]
    return found
