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

A command switches it on from a ``TracingConfig`` (a recipe's ``tracing`` section, or the
``--trace`` flags): ``with export_spans(config, default_path=...):`` traces the block, then
flushes and switches off. Nothing of OpenTelemetry is imported while it is off.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from apprentice.config import ConfigSection
from apprentice.formats.values import to_jsonable
from apprentice.settings import configure

if TYPE_CHECKING:
    from apprentice.lm.base import Request, Response

__all__ = [
    "EXPORTERS",
    "TracingConfig",
    "disable_tracing",
    "enable_tracing",
    "export_spans",
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


def enable_tracing(
    exporter: Any = None,
    *,
    tracer_provider: Any = None,
    batch: bool = True,
    service_name: str = "apprentice",
) -> Any:
    """Sends a span for every program run, module, predictor and LM call from now on, in
    every thread (``ap.configure``), and returns the OpenTelemetry tracer.

    ``exporter``: a span exporter (``InMemorySpanExporter()``, ``OTLPSpanExporter(...)``,
    ``ConsoleSpanExporter()``), given its own tracer provider, through a batching span
    processor (``batch=False``: each span exported when it ends), its spans from the service
    ``service_name``. Or ``tracer_provider``: one you set up. Neither: OpenTelemetry's global
    provider (``trace.set_tracer_provider``).
    """
    try:
        from opentelemetry import trace
    except ImportError:
        raise ImportError(_MISSING.format(package="opentelemetry-api")) from None
    if exporter is not None and tracer_provider is not None:
        raise ValueError("pass exporter= or tracer_provider=, not both")
    if exporter is not None:
        if not callable(getattr(exporter, "export", None)):
            raise TypeError(
                f"exporter={exporter!r} is not a span exporter (it has no export() method); "
                "pass e.g. opentelemetry.sdk.trace.export.ConsoleSpanExporter()"
            )
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        except ImportError:
            raise ImportError(_MISSING.format(package="opentelemetry-sdk")) from None

        tracer_provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
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


# -- switched on by a command: a recipe's tracing section or the --trace flags -----------------

EXPORTERS = ("otlp", "jsonl", "console", "none")

_MISSING = "tracing needs the {package} package: pip install 'apprentice[tracing]'"


class TracingConfig(ConfigSection):
    """Where the spans of a command's program runs go: a recipe's ``tracing`` section, or
    ``--trace EXPORTER`` (``--trace-endpoint``, ``--trace-path``) on the commands that run
    the program. Absent: no spans."""

    exporter: Literal["otlp", "jsonl", "console", "none"] = Field(
        description="otlp: to a collector over OTLP/HTTP (Jaeger, Tempo, Phoenix, MLflow); "
        "jsonl: one JSON span a line, appended to a file; console: printed to stderr; "
        "none: off (--trace none switches off a recipe's tracing for one command)"
    )
    endpoint: str | None = Field(
        None,
        description="otlp: the collector's URL, e.g. http://localhost:4318/v1/traces (a URL "
        "without a path gets /v1/traces); default: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else "
        "$OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces, else http://localhost:4318/v1/traces",
    )
    path: str | None = Field(
        None,
        description="jsonl: the file (relative: to the working directory); default: "
        "spans.jsonl in the run directory",
    )
    service_name: str = Field(
        "apprentice", min_length=1, description="the spans' service.name resource attribute"
    )

    @field_validator("endpoint")
    @classmethod
    def _an_http_url(cls, endpoint: str | None) -> str | None:
        if endpoint is not None:
            parts = urlsplit(endpoint)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(
                    f"{endpoint!r} is not an http(s) URL; OTLP over HTTP needs e.g. "
                    "http://localhost:4318/v1/traces"
                )
        return endpoint

    @model_validator(mode="after")
    def _options_of_its_exporter(self) -> TracingConfig:
        for option, exporter in (("endpoint", "otlp"), ("path", "jsonl")):
            if getattr(self, option) is not None and self.exporter != exporter:
                raise ValueError(
                    f"{option} is for the {exporter} exporter, not {self.exporter!r}: drop "
                    f"{option}, or set exporter: {exporter}"
                )
        return self


@contextlib.contextmanager
def export_spans(
    config: TracingConfig | None, *, default_path: Path | None = None
) -> Iterator[None]:
    """Spans of every program run in the block go where ``config`` says (``default_path``:
    the jsonl file when ``config.path`` is unset); when the block ends, however it ends,
    they are flushed and tracing is off again. ``None`` or ``exporter: none``: nothing at
    all happens, and nothing is imported."""
    if config is None or config.exporter == "none":
        yield
        return
    with contextlib.ExitStack() as stack:
        exporter = _exporter(config, default_path, stack)
        enable_tracing(exporter, service_name=config.service_name)
        stack.callback(disable_tracing)  # runs first: flushes into the file, then it closes
        yield


def _exporter(config: TracingConfig, default_path: Path | None, stack: contextlib.ExitStack):
    try:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter
    except ImportError:
        raise ImportError(_MISSING.format(package="opentelemetry-sdk")) from None
    if config.exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            package = "opentelemetry-exporter-otlp-proto-http"
            raise ImportError(_MISSING.format(package=package)) from None
        return OTLPSpanExporter(endpoint=_traces_endpoint(config.endpoint))
    if config.exporter == "console":
        return ConsoleSpanExporter(out=sys.stderr)  # stdout is the command's own output
    path = Path(config.path) if config.path is not None else default_path
    if path is None:
        raise ValueError(
            "the jsonl exporter needs a file for its spans: give --trace-path FILE (a "
            "recipe's tracing.path)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    out = stack.enter_context(path.open("a", encoding="utf-8"))
    return ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\n")


def _traces_endpoint(endpoint: str | None) -> str | None:
    """The OTLP/HTTP traces URL of ``endpoint``: a collector's bare URL gets ``/v1/traces``,
    as ``OTEL_EXPORTER_OTLP_ENDPOINT`` does; None stays None (the exporter reads the
    environment)."""
    if endpoint is None or urlsplit(endpoint).path not in ("", "/"):
        return endpoint
    return endpoint.rstrip("/") + "/v1/traces"


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
