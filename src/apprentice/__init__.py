"""apprentice: write LM programs as modules, run them with a teacher, compile them into a
small local student."""

from typing import Any

from apprentice.evaluate.evaluate import Evaluate, EvaluationError, EvaluationResult
from apprentice.evaluate.metrics import (
    answer_exact_match,
    answer_passage_match,
    exact_match,
    normalize_text,
    passage_has_answer,
    token_f1,
)
from apprentice.example import Completions, Example, Prediction
from apprentice.formats import ChatFormat, Format, JSONFormat, ParseError, SFTRow, T5Format
from apprentice.lm import (
    BaseLM,
    Cache,
    LMError,
    LMRequestError,
    LMUnavailableError,
    OpenAILM,
    Price,
    Request,
    Response,
    ScriptedLM,
)
from apprentice.lm.registry import UntrustedLMError
from apprentice.module import Module, ProgramFileError
from apprentice.optimize import (
    GEPA,
    BetterTogether,
    BootstrapFewShot,
    BootstrapFewShotWithRandomSearch,
    BootstrapFinetune,
    LabeledFewShot,
)
from apprentice.predict import ChainOfThought, MultiChainComparison, Predict, ReAct, Tool
from apprentice.predict.assertions import Assert, AssertionFailed, Suggest
from apprentice.predict.best_of_n import BestOfN, Refine
from apprentice.predict.program_of_thought import ProgramOfThought
from apprentice.retrieve import BM25Retriever, DenseRetriever, Retrieve, Retriever
from apprentice.settings import configure, context
from apprentice.signature import (
    InputField,
    OutputField,
    Signature,
    SignatureError,
    ensure_signature,
    make_signature,
)
from apprentice.traces import (
    BootstrapResult,
    Step,
    Trace,
    TraceStore,
    bootstrap_traces,
    capture,
)
from apprentice.tracing import disable_tracing, enable_tracing

__version__ = "0.1.0"

__all__ = [
    "Assert",
    "AssertionFailed",
    "BestOfN",
    "Refine",
    "Suggest",
    "settings",
    "BootstrapFewShot",
    "BootstrapFewShotWithRandomSearch",
    "BootstrapFinetune",
    "BetterTogether",
    "GEPA",
    "BM25Retriever",
    "DenseRetriever",
    "Retrieve",
    "Retriever",
    "LocalLM",
    "release_engines",
    "VLLMLM",
    "ServeConfig",
    "bind",
    "swap_adapter",
    "LoraConfig",
    "TrainConfig",
    "BootstrapResult",
    "LabeledFewShot",
    "Step",
    "Trace",
    "TraceStore",
    "bootstrap_traces",
    "capture",
    "BaseLM",
    "Cache",
    "ChainOfThought",
    "MultiChainComparison",
    "ReAct",
    "Tool",
    "ChatFormat",
    "Completions",
    "Evaluate",
    "EvaluationError",
    "EvaluationResult",
    "Example",
    "Format",
    "InputField",
    "JSONFormat",
    "T5Format",
    "LMError",
    "LMRequestError",
    "LMUnavailableError",
    "Module",
    "OpenAILM",
    "OutputField",
    "ParseError",
    "Predict",
    "ProgramOfThought",
    "Prediction",
    "Price",
    "ProgramFileError",
    "UntrustedLMError",
    "Request",
    "Response",
    "SFTRow",
    "ScriptedLM",
    "Signature",
    "SignatureError",
    "answer_exact_match",
    "answer_passage_match",
    "configure",
    "context",
    "disable_tracing",
    "enable_tracing",
    "ensure_signature",
    "exact_match",
    "inspect_history",
    "make_signature",
    "normalize_text",
    "passage_has_answer",
    "token_f1",
]


# Names whose modules import pydantic or the training stack: loaded on first use so that
# `import apprentice` stays fast.
_LAZY = {
    "LocalLM": "apprentice.lm.local",
    "release_engines": "apprentice.lm.engines",
    "VLLMLM": "apprentice.lm.vllm",
    "LoraConfig": "apprentice.train.config",
    "TrainConfig": "apprentice.train.config",
    "ServeConfig": "apprentice.serve.config",
    "bind": "apprentice.serve.swap",
    "swap_adapter": "apprentice.serve.swap",
}


# DSPy names that apprentice does without, and what to write instead.
_NOT_NEEDED = {
    "assert_transform_module": "backtracking is on for every program: the outermost module "
    "call re-runs when an ap.Assert/ap.Suggest fails; set the limit with "
    "ap.configure(max_backtracks=N) (0 turns it off)",
    "backtrack_handler": "the outermost module call handles backtracking itself; set the "
    "limit with ap.configure(max_backtracks=N)",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _NOT_NEEDED:
        raise AttributeError(f"apprentice has no {name}: {_NOT_NEEDED[name]}")
    raise AttributeError(f"module 'apprentice' has no attribute {name!r}")


def inspect_history(n: int = 1, *, lm: BaseLM | None = None, file: Any = None) -> str:
    """Prints (and returns) the last ``n`` LM calls: of every LM in this process (the
    configured one and any bound to a single predictor), in the order they finished; with
    ``lm=``, of that LM only."""
    from apprentice.lm.base import format_history, recent_history

    if lm is not None:
        return lm.inspect_history(n, file=file)
    return format_history(recent_history(n), file=file)
