"""OpenTelemetry spans of program runs: program -> module -> predictor -> LM call.

``ap.enable_tracing(exporter)`` switches it on (``ap.configure(tracer=...)`` underneath, so
``with ap.context(tracer=None):`` switches it off for one block, in one thread or task).
Off by default, and then a module call costs one settings read more.

Spans and their attributes:

- a program run (the outermost module call), a module, a predictor: ``apprentice.kind``
  (program / module / predictor), ``apprentice.module`` (its class), ``apprentice.predictor``
  (a predictor's dotted path in the program), ``apprentice.inputs`` and
  ``apprentice.outputs`` (JSON);
- an LM call (``chat <model>``, the OpenTelemetry GenAI conventions): ``gen_ai.*`` (model,
  provider, input and output tokens, temperature, max tokens), ``apprentice.adapter``,
  ``apprentice.adapter_hash``, ``apprentice.cached``, ``apprentice.latency_s``,
  ``apprentice.cost_usd`` (when the LM has a price; 0 for a cached answer),
  ``apprentice.messages`` and ``apprentice.completions`` (JSON).

Any OpenTelemetry exporter works: the SDK's console or in-memory exporters, OTLP (Jaeger,
Tempo, Phoenix, MLflow Tracing's OTLP endpoint).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from apprentice.formats.values import to_jsonable
from apprentice.settings import configure

if TYPE_CHECKING:
    from apprentice.lm.base import Request, Response

__all__ = [
    "disable_tracing",
    "enable_tracing",
    "lm_span",
    "module_span",
    "record_outputs",
    "record_response",
]

# A program run's predictor paths (id -> dotted path), for its predictor spans' names.
_PATHS: contextvars.ContextVar[dict[int, str] | None] = contextvars.ContextVar(
    "apprentice_trace_paths", default=None
)

# The providers enable_tracing made (disable_tracing flushes them).
_OWN_PROVIDERS: list[Any] = []


def enable_tracing(exporter: Any = None, *, tracer_provider: Any = None, batch: bool = True) -> Any:
    """Sends a span for every program run, module, predictor and LM call from now on, in
    every thread (``ap.configure``), and returns the OpenTelemetry tracer.

    ``exporter``: a span exporter (``InMemorySpanExporter()``, ``OTLPSpanExporter(...)``,
    ``ConsoleSpanExporter()``), given its own tracer provider, through a batching span
    processor (``batch=False``: each span exported when it ends). Or ``tracer_provider``:
    one you set up. Neither: OpenTelemetry's global provider (``trace.set_tracer_provider``).
    """
    try:
        from opentelemetry import trace
    except ImportError:
        raise ImportError(
            "tracing needs OpenTelemetry: pip install opentelemetry-sdk (and an exporter, "
            "e.g. opentelemetry-exporter-otlp)"
        ) from None
    if exporter is not None and tracer_provider is not None:
        raise ValueError("pass exporter= or tracer_provider=, not both")
    if exporter is not None:
        if not callable(getattr(exporter, "export", None)):
            raise TypeError(
                f"exporter={exporter!r} is not a span exporter (it has no export() method); "
                "pass e.g. opentelemetry.sdk.trace.export.ConsoleSpanExporter()"
            )
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        tracer_provider = TracerProvider(resource=Resource.create({"service.name": "apprentice"}))
        processor = BatchSpanProcessor if batch else SimpleSpanProcessor
        tracer_provider.add_span_processor(processor(exporter))
        _OWN_PROVIDERS.append(tracer_provider)
    provider = tracer_provider or trace.get_tracer_provider()
    if not callable(getattr(provider, "get_tracer", None)):
        raise TypeError(f"tracer_provider={provider!r} is not an OpenTelemetry TracerProvider")
    tracer = provider.get_tracer("apprentice")
    configure(tracer=tracer)
    return tracer


def disable_tracing() -> None:
    """No more spans (``ap.configure(tracer=None)``); the providers ``enable_tracing`` made
    export the spans they still hold now (a batching processor would wait for its next
    round or the process's exit) and shut down, their threads and exporters with them. A
    provider you passed in is yours to flush and shut down."""
    configure(tracer=None)
    while _OWN_PROVIDERS:
        _OWN_PROVIDERS.pop().shutdown()


@contextlib.contextmanager
def module_span(tracer: Any, module: Any, outermost: bool, kwargs: dict) -> Iterator[Any]:
    """The span of one module call; the caller sets its outputs with ``record_outputs``.
    A predictor is known by its place in the program run's tree (its dotted path)."""
    paths = _PATHS.get() or {}
    token = None
    if outermost:
        paths = {id(p): path for path, p in module.named_predictors()}
        token = _PATHS.set(paths)
    path = paths.get(id(module))
    if outermost:
        kind, name = "program", type(module).__name__
    elif path is not None:
        kind, name = "predictor", path
    else:
        kind, name = "module", type(module).__name__
    attributes = {"apprentice.kind": kind, "apprentice.module": type(module).__name__}
    if path is not None:
        attributes["apprentice.predictor"] = path
    attributes["apprentice.inputs"] = _json(kwargs)
    try:
        with tracer.start_as_current_span(f"{kind} {name}", attributes=attributes) as span:
            yield span
    finally:
        if token is not None:
            _PATHS.reset(token)


def record_outputs(span: Any, result: Any) -> None:
    """A module span's outputs: the prediction's fields, as JSON."""
    value = result.to_dict() if hasattr(result, "to_dict") else result
    span.set_attribute("apprentice.outputs", _json(value))


@contextlib.contextmanager
def lm_span(tracer: Any, lm: Any, request: Request) -> Iterator[Any]:
    """The span of one LM call; ``record_response`` fills in what came back."""
    identity = lm.identity
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": str(identity.get("backend") or type(lm).__name__),
        "gen_ai.request.model": str(identity.get("model") or ""),
        "apprentice.adapter": str(identity.get("adapter") or ""),
        "apprentice.adapter_hash": str(identity.get("adapter_hash") or ""),
        "apprentice.messages": _json(list(request.messages)),
    }
    if request.temperature is not None:
        attributes["gen_ai.request.temperature"] = request.temperature
    if request.max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = request.max_tokens
    name = f"chat {attributes['gen_ai.request.model']}"
    with tracer.start_as_current_span(name, attributes=attributes) as span:
        yield span


def record_response(span: Any, lm: Any, response: Response) -> None:
    """What an LM call's span says about its answer: tokens, latency, cost, completions."""
    usage = response.usage
    span.set_attributes(
        {
            "gen_ai.response.model": response.model or "",
            "gen_ai.usage.input_tokens": usage.prompt_tokens,
            "gen_ai.usage.output_tokens": usage.completion_tokens,
            "apprentice.cached": bool(response.cached),
            "apprentice.latency_s": float(response.latency_s),
            "apprentice.completions": _json(list(response.texts)),
        }
    )
    price = getattr(getattr(lm, "usage", None), "price", None)
    if price is not None:
        cost = 0.0 if response.cached else price.cost(usage.prompt_tokens, usage.completion_tokens)
        span.set_attribute("apprentice.cost_usd", float(cost))


def _json(value: Any) -> str:
    return json.dumps(to_jsonable(value), ensure_ascii=False, default=str)
