"""apprentice: write LM programs as modules, run them with a teacher, compile them into a
small local student."""

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
from apprentice.formats import ChatFormat, Format, JSONFormat, ParseError, SFTRow
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
    BootstrapFewShot,
    BootstrapFewShotWithRandomSearch,
    BootstrapFinetune,
    LabeledFewShot,
)
from apprentice.predict import ChainOfThought, Predict
from apprentice.predict.program_of_thought import ProgramOfThought
from apprentice.settings import configure, context
from apprentice.settings import settings as _current_settings
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

__version__ = "0.1.0"

__all__ = [
    "BootstrapFewShot",
    "BootstrapFewShotWithRandomSearch",
    "BootstrapFinetune",
    "LocalLM",
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
    "ChatFormat",
    "Completions",
    "Evaluate",
    "EvaluationError",
    "EvaluationResult",
    "Example",
    "Format",
    "InputField",
    "JSONFormat",
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
    "LoraConfig": "apprentice.train.config",
    "TrainConfig": "apprentice.train.config",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'apprentice' has no attribute {name!r}")


def inspect_history(n: int = 1) -> str:
    """Prints the last ``n`` calls of the configured LM."""
    lm = _current_settings().lm
    if lm is None:
        raise RuntimeError("no LM configured: call ap.configure(lm=...) first")
    return lm.inspect_history(n)
