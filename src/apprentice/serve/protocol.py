"""The OpenAI request bodies as our server reads them: checked, with a clear 4xx otherwise.

Only what changes the answer is read (``model``, messages or prompt, ``temperature``,
``top_p``, ``max_tokens``, ``n``, ``stop``, ``seed``); an option the server cannot honour
(streaming, logprobs, tools, penalties, ...) is refused rather than silently ignored, and
the rest (``user``, ``metadata``, ...) is ignored as it does not change the answer.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import re
import time
import uuid
from typing import Any

__all__ = [
    "check_api_key",
    "warn_if_exposed",
    "MAX_JSON_DEPTH",
    "MAX_JSON_ELEMENTS",
    "MAX_REQUEST_TOKENS",
    "MAX_ROWS",
    "MAX_PROMPTS",
    "ClientGone",
    "HTTPError",
    "authorize",
    "chat_messages",
    "check_request_size",
    "choice_texts",
    "completion_body",
    "error_body",
    "json_object",
    "prompt_messages",
    "sampling_options",
    "template_options",
]

log = logging.getLogger(__name__)

MAX_N = 64
MAX_PROMPTS = 64  # prompts in one completions request (each is a request to the engine)
MAX_STOPS = 16
MAX_JSON_DEPTH = 32  # an OpenAI body nests 5 levels at most (messages, content parts)
MAX_JSON_ELEMENTS = 20_000  # objects, arrays and their members: a long chat has a few thousand
MAX_ROWS = 256  # sequences one request may ask for: prompts x n
MAX_REQUEST_TOKENS = 1 << 18  # tokens one request may ask to generate: prompts x n x max_tokens
_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
INT64 = (-(2**63), 2**63 - 1)  # seeds, as vLLM takes them
ROLES = ("system", "user", "assistant")

_ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    405: "MethodNotAllowed",
    408: "RequestTimeout",
    411: "LengthRequired",
    413: "RequestTooLarge",
    431: "RequestHeaderFieldsTooLarge",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}

# option -> the values we can honour (anything else is refused with a 400)
_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "stream": (None, False),
    "echo": (None, False),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "best_of": (None, 1),
    "suffix": (None, ""),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "response_format": (None, {"type": "text"}),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
}


class HTTPError(Exception):
    """A request the server answers with ``status`` and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


class ClientGone(Exception):
    """The client closed its connection while its request waited: nobody is left to answer."""


def authorize(header: str | None, api_key: str | None) -> None:
    """Raises a 401 unless ``header`` is ``Bearer <api_key>`` (anything goes without a key)."""
    if api_key is None:
        return
    if not header:
        raise HTTPError(401, "missing API key: send the header 'Authorization: Bearer <key>'")
    scheme, _, token = header.partition(" ")
    sent = token.strip().encode("latin-1", "replace")  # header values arrive as latin-1
    if scheme.lower() != "bearer" or not hmac.compare_digest(sent, api_key.encode()):
        raise HTTPError(401, "invalid API key")


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    error_type = _ERROR_TYPES.get(status, "Error")
    return {"error": {"message": message, "type": error_type, "param": param, "code": status}}


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object whose every string is valid Unicode, whose numbers are
    finite and whose nesting is at most ``MAX_JSON_DEPTH``: anything else is a 400, so the
    routes never meet a value they cannot encode, print or hand to the tokenizer. A body
    of more than ``MAX_JSON_ELEMENTS`` elements is refused before it is parsed."""
    skeleton = _STRINGS.sub(b'""', body)  # a string's commas and brackets are its text
    elements = skeleton.count(b",") + skeleton.count(b"{") + skeleton.count(b"[")
    if elements > MAX_JSON_ELEMENTS:
        raise HTTPError(
            400,
            f"request body holds about {elements} JSON elements (members, arrays, objects); "
            f"at most {MAX_JSON_ELEMENTS} are read, nested at most {MAX_JSON_DEPTH} levels: "
            "send fewer messages or prompts",
        )
    try:
        data = json.loads(body, parse_constant=_refuse_constant)
    except RecursionError:
        raise HTTPError(
            400, f"request body is nested deeper than {MAX_JSON_DEPTH} levels"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HTTPError(400, f"request body must be a JSON object, got {type(data).__name__}")
    _check_depth(data)
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:  # "\ud800" escapes decode to unpaired surrogates
        bad = exc.object[exc.start : exc.end].encode("unicode_escape").decode()
        raise HTTPError(
            400, f"request body holds a lone surrogate ({bad}), which is not valid Unicode"
        ) from None
    return data


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a finite number")


def _check_depth(data: Any) -> None:
    """Iterative, so a body nested beyond the stack is refused rather than crashing."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise HTTPError(400, f"request body is nested deeper than {MAX_JSON_DEPTH} levels")
        children = value.values() if isinstance(value, dict) else value
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def chat_messages(value: Any) -> list[dict[str, str]]:
    """``messages`` as role/content string pairs (text content parts are joined)."""
    if not isinstance(value, list) or not value:
        raise HTTPError(400, "'messages' must be a non-empty list", param="messages")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise HTTPError(
                400,
                f"messages[{i}] must be an object with 'role' one of {list(ROLES)}, got "
                f"{_shown(message)}",
                param="messages",
            )
        messages.append({"role": message["role"], "content": _content(message.get("content"), i)})
    return messages


def _content(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return "".join(p["text"] for p in content)
    raise HTTPError(
        400,
        f"messages[{i}].content must be a string or a list of text parts; only text is served, "
        f"got {_shown(content)}",
        param="messages",
    )


def _shown(value: Any, limit: int = 200) -> str:
    """A value from a request, shortened for a message; safe for a structure nested beyond
    the stack (built in Python: a parsed body is at most ``MAX_JSON_DEPTH`` deep)."""
    try:
        return f"{value!r:.{limit}}"
    except RecursionError:
        return f"a {type(value).__name__} nested too deeply to show"


_SECTION = re.compile(r"<\|([a-z]+)\|>\n")


def prompt_messages(prompt: str) -> list[dict[str, str]]:
    """The messages a flattened-chat prompt came from (an exact inverse of
    ``formats.messages_to_prompt``), or the prompt as one user message."""
    from apprentice.formats import messages_to_prompt

    suffix = "\n<|assistant|>\n"
    if prompt.startswith("<|") and prompt.endswith(suffix):
        body = prompt[: -len(suffix)]
        marks = list(_SECTION.finditer(body))
        if marks and marks[0].start() == 0:
            messages = []
            for mark, after in zip(marks, [*marks[1:], None], strict=True):
                end = after.start() - 1 if after is not None else len(body)
                messages.append({"role": mark.group(1), "content": body[mark.end() : end]})
            # A content that itself holds a marker line splits wrongly: keep only exact inverses.
            if all(m["role"] in ROLES for m in messages) and messages_to_prompt(messages) == prompt:
                return messages
    return [{"role": "user", "content": prompt}]


def sampling_options(data: dict[str, Any], *, chat: bool) -> dict[str, Any]:
    """The ``Request`` fields a body asks for, each checked."""
    for name, allowed in _UNSUPPORTED.items():
        if name in data and data[name] not in allowed:
            raise HTTPError(
                400,
                f"{name}={_shown(data[name], 100)} is not supported by apprentice's server",
                param=name,
            )
    max_tokens = data.get("max_tokens")
    if chat and max_tokens is None:
        max_tokens = data.get("max_completion_tokens")
    n = data.get("n", 1)
    if n is None:
        n = 1
    return {
        "temperature": _number(data, "temperature", low=0.0),
        "top_p": _number(data, "top_p", low=0.0, high=1.0, open_low=True),
        "max_tokens": _integer("max_tokens", max_tokens, low=1),  # the engine: <= the context
        "n": _integer("n", n, low=1, high=MAX_N),
        "stop": _stops(data.get("stop")),
        "seed": _integer("seed", data.get("seed"), low=INT64[0], high=INT64[1]),
    }


MAX_TEMPLATE_VARS = 16


def template_options(data: dict[str, Any]):
    """The chat template variables a body asks for (``chat_template_kwargs``, as vLLM takes
    them: a bound student sends the ``date_string`` its dataset fixed), or None. A
    ``chat_template`` of the client's own is refused: the server renders with the model's."""
    from apprentice.formats.prompt import PromptTemplate

    if data.get("chat_template") is not None:
        raise HTTPError(
            400,
            "chat_template is not supported by apprentice's server (it renders with the "
            "model's own template); serve the student with the template it was trained with",
            param="chat_template",
        )
    variables = data.get("chat_template_kwargs")
    if variables is None:
        return None
    ok = (
        isinstance(variables, dict)
        and len(variables) <= MAX_TEMPLATE_VARS
        and all(isinstance(v, str) and len(k) <= 64 and len(v) <= 256 for k, v in variables.items())
    )
    if not ok:
        raise HTTPError(
            400,
            f"chat_template_kwargs must be an object of at most {MAX_TEMPLATE_VARS} string "
            f"values (names up to 64, values up to 256 characters), got {_shown(variables, 100)}",
            param="chat_template_kwargs",
        )
    return PromptTemplate(None, tuple(sorted(variables.items())))


def _number(data, name, *, low, high=None, open_low=False) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    number = _finite(value)
    ok = number is not None and (number > low if open_low else number >= low)
    if not ok or (high is not None and number > high):
        bounds = _bounds(f"> {low}" if open_low else f">= {low}", high)
        raise HTTPError(
            400, f"{name} must be a finite number{bounds}, got {_shown(value, 100)}", param=name
        )
    return number


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)  # an int beyond a float's range raises
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _integer(name, value, *, low=None, high=None) -> int | None:
    if value is None:
        return None
    ok = type(value) is int and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        bounds = _bounds(f">= {low}" if low is not None else None, high)
        raise HTTPError(
            400, f"{name} must be an integer{bounds}, got {_shown(value, 100)}", param=name
        )
    return value


def _bounds(low: str | None, high: float | None) -> str:
    parts = ([low] if low else []) + ([f"<= {high}"] if high is not None else [])
    return " " + " and ".join(parts) if parts else ""


def _stops(value) -> tuple[str, ...] | None:
    if value is None:
        return None
    stops = [value] if isinstance(value, str) else value
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOPS
        or not all(isinstance(s, str) for s in stops)
    ):
        raise HTTPError(
            400,
            f"stop must be a string or a list of at most {MAX_STOPS} strings, got {_shown(value, 100)}",
            param="stop",
        )
    return tuple(s for s in stops if s) or None


def check_request_size(
    prompts: int, n: int | None, max_tokens: int | None, default: int, context: int
) -> None:
    """A 400 when one request asks for more than ``MAX_ROWS`` sequences or more than
    ``MAX_REQUEST_TOKENS`` generated tokens (``max_tokens`` else the server's ``default``,
    at most ``context``: a longer one gets the engine's own 400, which says why)."""
    n = n or 1
    tokens = min(max_tokens or default, context)
    rows = prompts * n
    if rows <= MAX_ROWS and rows * tokens <= MAX_REQUEST_TOKENS:
        return
    raise HTTPError(
        400,
        f"this request asks for {prompts} prompt(s) x n={n} = {rows} sequences of up to "
        f"{tokens} tokens ({rows * tokens} tokens); one request may ask for at most {MAX_ROWS} "
        f"sequences and {MAX_REQUEST_TOKENS} tokens: send fewer prompts, a smaller n or a "
        "smaller max_tokens",
    )


def choice_texts(response) -> list[tuple[str, str | None]]:
    reasons = list(response.finish_reasons) or [None] * len(response.texts)
    return list(zip(response.texts, reasons, strict=True))


def completion_body(prefix: str, kind: str, model: str, choices: list, responses: list) -> dict:
    prompt = sum(r.usage.prompt_tokens for r in responses)
    completion = sum(r.usage.completion_tokens for r in responses)
    return {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


# -- who may call: shared by our server and the vLLM gateway ---------------------------------
def check_api_key(api_key: str | None) -> None:
    """A key must be one that HTTP clients can send: header values are ASCII (httpx and the
    openai client refuse anything else), so a key with other characters could never match."""
    if api_key is None:
        return
    if not isinstance(api_key, str) or not api_key.strip():
        raise ValueError("api_key must be a non-empty string, or None for no key")
    odd = next((i for i, c in enumerate(api_key) if not (c.isascii() and c.isprintable())), None)
    if odd is not None:
        raise ValueError(
            f"api_key must be printable ASCII (clients send it in an HTTP header, which carries "
            f"ASCII only), but character {odd} is {api_key[odd]!r}: choose another key"
        )


def warn_if_exposed(host: str, api_key: str | None) -> bool:
    """Logs a warning (and returns True) when ``host`` reaches beyond this machine and no
    key guards the server."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        loopback = False
    if loopback or api_key is not None:
        return False
    log.warning(
        "serving on %s without an API key: anyone who can reach this address can use the "
        "models (and load adapters, with an adapter root); set --api-key or VLLM_API_KEY",
        host,
    )
    return True
