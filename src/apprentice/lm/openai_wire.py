"""What OpenAILM puts on the wire and how it reads what comes back.

Pure functions of bytes and values, no I/O: the sync and async calls (and every
transport under them) build the same request bytes here and check every reply here, so
each rule has one place. The HTTP status is classified here too: a retryable status
becomes ``Retryable``, any other non-200 an ``LMRequestError``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from apprentice.lm.base import LMRequestError, Request, Response
from apprentice.lm.openai_retry import RETRY_STATUSES, Retryable, retry_after
from apprentice.lm.usage import Usage

__all__ = [
    "encode",
    "read_completion",
    "read_reply",
    "request_body",
    "resolve_base_url",
    "server_message",
]


def resolve_base_url(base_url: str | None) -> str:
    """The endpoint a ``base_url`` of None means: ``$OPENAI_BASE_URL``, else OpenAI's."""
    return (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip(
        "/"
    )


def encode(body: dict[str, Any]) -> bytes:
    """Byte for byte what httpx's ``json=`` sends, whichever transport carries it."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def request_body(
    request: Request,
    *,
    model: str,
    model_type: str,
    defaults: dict[str, Any],
    extra_body: dict[str, Any],
) -> dict[str, Any]:
    """The JSON body for ``request``: ``defaults`` (temperature, max_tokens, top_p) fill what the
    request leaves None, a None default leaves the option to the server, and
    ``extra_body`` goes in last (it may override anything)."""
    body: dict[str, Any] = {"model": model}
    if model_type == "chat":
        body["messages"] = list(request.messages)
    else:
        from apprentice.formats import messages_to_prompt

        body["prompt"] = messages_to_prompt(request.messages)
    for name in ("temperature", "max_tokens", "top_p"):
        value = getattr(request, name)
        value = value if value is not None else defaults.get(name)
        if value is not None:
            body[name] = value
    if request.n != 1:
        body["n"] = request.n
    for name in ("seed",):
        if getattr(request, name) is not None:
            body[name] = getattr(request, name)
    if request.stop:
        body["stop"] = list(request.stop)
    body.update(extra_body)
    return body


def read_reply(
    status: int,
    headers: Any,
    content: bytes,
    *,
    url: str,
    asked: str,
    model: str,
    model_type: str,
    n: int,
    latency: float,
) -> Response:
    """The Response of one attempt's reply. Raises ``Retryable`` (a retryable status, or a
    200 whose body is malformed) or ``LMRequestError`` (any other status: retrying will
    not help). ``asked``: the model name the request asked for (an adapter's, when one
    is); ``model``: the LM's model, the Response's when the reply names none."""
    if status != 200:
        text = server_message(content)
        if status in RETRY_STATUSES:
            raise Retryable(
                f"HTTP {status}: {text[:300]}", status, retry_after(headers.get("retry-after"))
            )
        raise LMRequestError(
            f"{url} refused the request for model {asked!r} with HTTP {status}: {text[:500]}",
            status=status,
            body=content.decode("utf-8", "replace")[:2000],
        )
    try:
        texts, usage, named, finish_reasons = read_completion(content, model_type, n)
    except (ValueError, RecursionError) as exc:  # json's errors, and a body nested too deep
        if isinstance(exc, RecursionError):
            exc = ValueError("the body is nested too deeply to read")
        raise Retryable(
            f"malformed reply from {url}: {exc}; the body began {content[:200]!r}"
        ) from None
    return Response(
        texts=texts,
        usage=usage,
        model=named or model,
        finish_reasons=finish_reasons,
        latency_s=latency,
    )


def server_message(content: bytes) -> str:
    """The error message in an OpenAI-style error body, else the body's text."""
    text = content.decode("utf-8", "replace")
    try:
        error = json.loads(text).get("error")
        message = error.get("message") if isinstance(error, dict) else error
        if isinstance(message, str) and message:
            return message
    except (ValueError, AttributeError, RecursionError):
        pass
    return text.strip()[:2000] or "(empty body)"


def read_completion(
    content: bytes, model_type: str, n: int
) -> tuple[list[str], Usage, str | None, list[str | None]]:
    """(texts, usage, model, finish reasons) of a 200 reply, the first ``n`` choices by
    index. Raises ValueError naming what is wrong with the reply's shape."""
    data = json.loads(content)
    if not isinstance(data, dict):
        raise ValueError(f"the body must be a JSON object, got {type(data).__name__}")
    choices = data.get("choices")
    if not isinstance(choices, list):
        raise ValueError(f"choices must be a list, got {type(choices).__name__}")
    if len(choices) < n:
        raise ValueError(f"{len(choices)} choice(s) for n={n}")
    for i, choice in enumerate(choices):
        if not isinstance(choice, dict):
            raise ValueError(f"choice {i} must be an object, got {type(choice).__name__}")
        if type(choice.get("index", 0)) is not int:
            raise ValueError(f"choice {i}: index must be an integer, got {choice['index']!r}")
    choices = sorted(choices, key=lambda c: c.get("index", 0))[:n]
    texts, finish_reasons = [], []
    for i, choice in enumerate(choices):
        if model_type == "chat":
            message = choice.get("message") or {}
            if not isinstance(message, dict):
                raise ValueError(f"choice {i}: message must be an object, got {message!r:.80}")
            texts.append(_text(message.get("content"), f"choice {i}: content"))
        else:
            texts.append(_text(choice.get("text"), f"choice {i}: text"))
        reason = choice.get("finish_reason")
        finish_reasons.append(reason if isinstance(reason, str) else None)
    usage = data.get("usage") or {}
    if not isinstance(usage, dict):
        raise ValueError(f"usage must be an object or null, got {type(usage).__name__}")
    tokens = Usage(usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0)
    model = data.get("model")
    return texts, tokens, model if isinstance(model, str) else None, finish_reasons


def _text(value: Any, what: str) -> str:
    if value is None:
        return ""  # a reply that is only tool calls, or an empty generation
    if not isinstance(value, str):
        raise ValueError(
            f"{what} must be a string or null, got {type(value).__name__} {value!r:.80}"
        )
    bad = unstorable_at(value)
    if bad is not None:  # JSON's "\ud800" escape: no UTF-8 file (trace, cache) can hold it
        raise ValueError(
            f"{what} holds a lone surrogate {value[bad]!r} at character {bad}, which is not "
            "text that can be stored"
        )
    return value


def unstorable_at(text: str) -> int | None:
    """The index of the first character UTF-8 cannot encode (a lone surrogate), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None
