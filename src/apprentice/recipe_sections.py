"""The sections of a recipe, each a typed config with a help string on every field.

``Recipe`` (``apprentice/recipe.py``) puts them together and loads them from YAML; the
number rules every section shares (no ``inf``/``nan``, no booleans for numbers, no
unknown keys) come from ``ConfigSection``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from apprentice.config import ConfigSection
from apprentice.serve.config import ServeConfig
from apprentice.student_loading import StudentLoading
from apprentice.tracing import TracingConfig

__all__ = [
    "BootstrapConfig",
    "DataConfig",
    "DataSource",
    "DatasetConfig",
    "EvalConfig",
    "OptimizeConfig",
    "ServeConfig",
    "StudentConfig",
    "TeacherConfig",
    "TinyStudent",
    "TracingConfig",
]


class _Section(ConfigSection):
    pass


class DataSource(_Section):
    """One split: a file (``.jsonl``, ``.json``, ``.csv``), a HF ``datasets`` directory, or a
    factory ``pkg.mod:fn`` called with ``args`` that returns examples."""

    path: str | None = Field(None, description="JSONL/JSON/CSV file or HF datasets directory")
    split: str | None = Field(None, description="split of a HF DatasetDict directory")
    factory: str | None = Field(None, description="import path of fn(**args) -> examples")
    args: dict[str, Any] = Field(default_factory=dict, description="arguments of the factory")
    limit: int | None = Field(None, ge=1, description="use the first N examples only")

    @model_validator(mode="after")
    def _one_source(self) -> DataSource:
        if (self.path is None) == (self.factory is None):
            raise ValueError("give exactly one of 'path' or 'factory'")
        return self


class DataConfig(_Section):
    train: DataSource = Field(description="examples the teacher is run on")
    dev: DataSource = Field(description="held-out examples for the report")
    inputs: list[str] = Field(description="fields that are program inputs; the rest are labels")


class TeacherConfig(_Section):
    """``backend: openai`` for any OpenAI-compatible endpoint; ``scripted`` for a Python
    function ``fn(signature, inputs) -> outputs`` (tests and the offline demo)."""

    backend: Literal["openai", "scripted"] = "openai"
    model: str = Field("scripted", description="model name sent to the endpoint")
    base_url: str | None = Field(None, description="e.g. https://api.openai.com/v1")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable with the key")
    script: str | None = Field(None, description="scripted: import path of the function")
    model_type: Literal["chat", "text"] = Field(
        "chat", description="openai: chat completions, or completions with a flat prompt"
    )
    temperature: float | None = Field(0.0, ge=0, description="None: the endpoint's default")
    max_tokens: int | None = Field(1024, ge=1)
    concurrency: int = Field(32, ge=1, description="requests in flight")
    price: dict[str, float] | None = Field(
        None, description="USD per million tokens: {input: ..., output: ...}"
    )
    extra_body: dict[str, Any] | None = Field(
        None,
        description="openai: provider options added to every request body, e.g. "
        "{reasoning_effort: low} or {max_completion_tokens: 4096}; part of the teacher's "
        "identity (other options are another teacher: new cache keys, new traces)",
    )

    @model_validator(mode="after")
    def _script_for_scripted(self) -> TeacherConfig:
        if self.backend == "scripted" and not self.script:
            raise ValueError("backend 'scripted' needs script (pkg.mod:function)")
        if self.backend == "scripted" and self.extra_body:
            raise ValueError(
                "teacher.extra_body goes to an endpoint's requests: set it with backend "
                "'openai', or drop it for a scripted teacher"
            )
        return self


class TinyStudent(_Section):
    """A random-init student built from a config on first use, with a BPE tokenizer trained
    on the run's own training rows (no download). For offline demos and tests only."""

    kind: Literal["causal", "seq2seq"] = "causal"
    vocab_size: int = Field(1000, ge=300)
    hidden_size: int = Field(128, ge=16)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    seed: int = 0

    @field_validator("num_heads")
    @classmethod
    def _heads_divide_hidden(cls, heads: int, info: ValidationInfo) -> int:
        hidden, kind = info.data.get("hidden_size"), info.data.get("kind")
        if hidden is None:
            return heads
        fits = [h for h in (1, 2, 4, 8, 16) if _head_size_ok(hidden, h, kind)]
        if not _head_size_ok(hidden, heads, kind):
            even = " into even head sizes (rotary embeddings)" if kind == "causal" else ""
            raise ValueError(
                f"num_heads {heads} does not divide hidden_size {hidden}{even}; "
                f"use one of {fits} or change hidden_size"
            )
        return heads


def _head_size_ok(hidden: int, heads: int, kind: str | None) -> bool:
    return hidden % heads == 0 and (kind != "causal" or (hidden // heads) % 2 == 0)


class StudentConfig(StudentLoading):
    """Which base model the student is (``model`` or ``tiny``) and how it is loaded (the
    options of ``StudentLoading``: revision, dtype, attn_implementation, load_in_4bit,
    trust_remote_code), in training, serving and ``export --merged`` alike."""

    model: str | None = Field(None, description="local path or hub name of the base student")
    tiny: TinyStudent | None = Field(None, description="build a tiny student instead (offline)")
    chat_template: str | None = Field(
        None,
        description="the causal student's chat template instead of its tokenizer's: a Jinja "
        "file, Jinja text, or 'none' (the plain <|role|> layout); trained and served alike",
    )

    @model_validator(mode="after")
    def _one_student(self) -> StudentConfig:
        if (self.model is None) == (self.tiny is None):
            raise ValueError("give exactly one of 'model' or 'tiny'")
        if self.tiny is not None:
            for option in ("revision", "trust_remote_code"):
                if getattr(self, option) not in (None, False):
                    raise ValueError(
                        f"student.{option} is for a model loaded from the hub; a tiny student "
                        f"is built from its config here: drop student.{option}"
                    )
        else:
            self.check(self.model, here=False)  # this machine is checked when it loads
        return self

    def loading(self) -> StudentLoading:
        """The options of how the base is loaded, without which base it is."""
        return StudentLoading(**{k: getattr(self, k) for k in StudentLoading.model_fields})


class BootstrapConfig(_Section):
    threshold: float | None = Field(1.0, description="keep traces scoring at least this")
    attempts: int = Field(1, ge=1, description="tries per example (retries sample hotter)")
    concurrency: int = Field(32, ge=1, description="program runs in flight")
    retry_failed: bool = Field(
        False, description="run again the examples whose stored trace failed (else reused)"
    )
    max_cost_usd: float | None = Field(
        None,
        gt=0,
        description="stop starting teacher runs once the run's teacher spend (all bootstrap "
        "runs of this run directory, at teacher.price) reaches this many dollars; a later "
        "run with a higher cap goes on from the stored traces",
    )


class DatasetConfig(_Section):
    multitask: bool = Field(True, description="one adapter for all predictors (else one each)")
    val_fraction: float = Field(0.1, ge=0, lt=1)
    format: Literal["auto", "chat", "json", "t5", "baked"] = Field(
        "auto",
        description="the student's prompt format: chat, json, t5 (markers and escapes a "
        "T5 tokenizer keeps), or baked (chat sections without instructions, field "
        "descriptions or demos: the adapter learns them); auto = t5 for a seq2seq "
        "student, else chat",
    )


class EvalConfig(_Section):
    num_threads: int = Field(16, ge=1)
    untrained: bool = Field(True, description="also score the student before training")
    teacher: bool = Field(True, description="also score the teacher (uses teacher calls)")
    untrained_max_new_tokens: int = Field(
        64, ge=1, description="cap for the untrained student, which rarely stops on its own"
    )
    fewshot: int = Field(
        0,
        ge=0,
        description="also score the untrained student prompted with this many of the "
        "teacher's passing runs as demos (BootstrapFewShot): what prompting alone buys; 0 = off",
    )


# -- optimize: BetterTogether from a recipe ----------------------------------------------------


class BootstrapFewShotOptions(_Section):
    """``ap.BootstrapFewShot``: demos are the teacher's passing runs of the program."""

    name: Literal["bootstrap_fewshot"] = Field(description="the prompt optimizer")
    max_bootstrapped_demos: int = Field(4, ge=0, description="teacher runs kept as demos")
    max_labeled_demos: int = Field(
        16, ge=0, description="demo slots left over filled with labelled training examples"
    )
    max_rounds: int = Field(1, ge=1, description="passes over the training examples")


class RandomSearchOptions(_Section):
    """``ap.BootstrapFewShotWithRandomSearch``: several demo sets, the best on the valset."""

    name: Literal["random_search"] = Field(description="the prompt optimizer")
    num_candidate_programs: int = Field(
        8, ge=0, description="bootstrapped candidates (besides zero-shot and labelled-only)"
    )
    max_bootstrapped_demos: int = Field(4, ge=1, description="most teacher runs per candidate")
    max_labeled_demos: int = Field(16, ge=0, description="labelled demos per candidate")
    seed: int = Field(0, description="shuffles the training examples per candidate")


class GEPAOptions(_Section):
    """``ap.GEPA``: a proposer LM rewrites each predictor's instruction from its failing runs."""

    name: Literal["gepa"] = Field(description="the prompt optimizer")
    max_metric_calls: int | None = Field(
        None, ge=1, description="budget: program runs scored (give this or max_full_evals)"
    )
    max_full_evals: int | None = Field(
        None, ge=1, description="budget: passes over the training and validation examples"
    )
    reflection_minibatch_size: int = Field(3, ge=1, description="runs read per proposal")
    examples_per_proposal: int = Field(6, ge=1, description="most runs shown to the proposer")
    seed: int = Field(0, description="the search's random seed")
    proposer: TeacherConfig | None = Field(
        None,
        description="the LM that proposes instructions, configured like teacher; "
        "default: the recipe's teacher",
    )

    @model_validator(mode="after")
    def _one_budget(self) -> GEPAOptions:
        if (self.max_metric_calls is None) == (self.max_full_evals is None):
            raise ValueError(
                "give gepa exactly one budget: max_metric_calls (program runs scored) or "
                f"max_full_evals (passes over the data); got max_metric_calls="
                f"{self.max_metric_calls}, max_full_evals={self.max_full_evals}"
            )
        return self


PROMPT_OPTIMIZERS = {
    "bootstrap_fewshot": BootstrapFewShotOptions,
    "random_search": RandomSearchOptions,
    "gepa": GEPAOptions,
}


def _optimizer_name(value: Any) -> Any:
    return value.get("name") if isinstance(value, dict) else getattr(value, "name", None)


# Chosen by ``name`` with a function: a ``discriminator="name"`` cannot be used on fields
# that ConfigSection's before-validator also checks.
PromptOptimizerConfig = Annotated[
    Annotated[BootstrapFewShotOptions, Tag("bootstrap_fewshot")]
    | Annotated[RandomSearchOptions, Tag("random_search")]
    | Annotated[GEPAOptions, Tag("gepa")],
    Discriminator(_optimizer_name),
]


class WeightOptimizerConfig(_Section):
    """``ap.BootstrapFinetune`` with the recipe's own student, bootstrap, dataset, lora,
    train and serve sections: one place says how the student is trained."""

    name: Literal["bootstrap_finetune"] = Field(
        "bootstrap_finetune", description="the weight optimizer"
    )


class OptimizeConfig(_Section):
    """``ap.BetterTogether`` over the recipe's program: prompt (``p``) and weight (``w``)
    steps in the order ``strategy`` gives, each from the previous step's program, every
    step scored on examples held out of the training split; the best program is kept."""

    strategy: str = Field(
        "p -> w -> p",
        description="'p' (prompt step) and 'w' (weight step) joined by '->', run left to right",
    )
    prompt: PromptOptimizerConfig = Field(
        default_factory=lambda: RandomSearchOptions(name="random_search"),
        description="the prompt optimizer: {name: bootstrap_fewshot | random_search | gepa, "
        "...its options}",
    )
    weights: WeightOptimizerConfig = Field(
        default_factory=WeightOptimizerConfig, description="the weight optimizer"
    )
    val_fraction: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="share of the training examples held out to score every step (the rest "
        "are what the steps learn from); 0 = score on the training examples themselves",
    )
    num_threads: int = Field(8, ge=1, description="examples scored at once")

    @field_validator("prompt", mode="before")
    @classmethod
    def _a_known_optimizer(cls, value: Any) -> Any:
        name = _optimizer_name(value)
        if name not in PROMPT_OPTIMIZERS:
            raise ValueError(
                f"prompt optimizer name {name!r} is not one of "
                f"{', '.join(PROMPT_OPTIMIZERS)}; write e.g. prompt: {{name: random_search}}"
            )
        return value

    @field_validator("strategy")
    @classmethod
    def _a_chain_of_steps(cls, strategy: str) -> str:
        from apprentice.optimize.together import parse_strategy

        return " -> ".join(parse_strategy(strategy))
