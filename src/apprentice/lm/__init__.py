"""The LM layer: requests, responses, backends, cache and usage."""

from apprentice.lm.base import (
    BaseLM,
    LMError,
    LMRequestError,
    LMUnavailableError,
    Request,
    Response,
    Usage,
)
from apprentice.lm.cache import Cache
from apprentice.lm.openai import OpenAILM
from apprentice.lm.scripted import ScriptedLM
from apprentice.lm.usage import Price

__all__ = [
    "BaseLM",
    "Cache",
    "LMError",
    "LMRequestError",
    "LMUnavailableError",
    "OpenAILM",
    "Price",
    "Request",
    "Response",
    "ScriptedLM",
    "Usage",
]
