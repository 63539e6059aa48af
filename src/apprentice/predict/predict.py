"""Predict: the one module that calls an LM. Every other predictor builds on it."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from apprentice.example import Example, Prediction
from apprentice.formats.base import Format, ParseError
from apprentice.formats.values import to_jsonable
from apprentice.module import Predictor, ProgramFileError
from apprentice.predict.assertions import finish_call, sampling_of, start_call
from apprentice.settings import current_tracer, settings
from apprentice.signature import Signature, ensure_signature

__all__ = ["Predict", "RequestMeta", "StepRecord", "default_format"]

log = logging.getLogger(__name__)

_SPECIAL = ("config", "demos", "lm")
_CONFIG_KEYS = ("temperature", "max_tokens", "n", "stop", "top_p", "seed", "rollout")
_DEFAULT_FORMAT: Format | None = None


def default_format() -> Format:
    """The format in force: ``settings().format`` or the chat format."""
    global _DEFAULT_FORMAT
    chosen = settings().format
    if chosen is not None:
        return chosen
    if _DEFAULT_FORMAT is None:  # stateless, created once
        from apprentice.formats.chat import ChatFormat

        _DEFAULT_FORMAT = ChatFormat()
    return _DEFAULT_FORMAT


@dataclass(frozen=True)
class RequestMeta:
    """What an in-process backend (ScriptedLM) may read besides the rendered messages."""

    signature: type[Signature]
    inputs: Mapping[str, Any]
    format: Format


@dataclass
class StepRecord:
    """One finished predictor call, handed to the observers in ``settings().observers``."""

    predictor: Predict
    signature: type[Signature]
    demos: list[dict[str, Any]]
    inputs: dict[str, Any]
    messages: list[dict[str, str]]
    completions: list[str]
    outputs: list[dict[str, Any]]
    lm_identity: dict[str, Any]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cached: bool = False
    error: BaseException | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _PreparedState:
    """A saved predictor's state, checked and built, ready to be set."""

    signature: type[Signature]
    demos: list[Example]
    config: dict[str, Any]
    lm: Any
    format: Format | None = None


class Predict(Predictor):
    """Calls an LM with a signature: renders the prompt, sends it, parses the reply."""

    def __init__(
        self,
        signature: str | type[Signature],
        *,
        lm: Any = None,
        demos: Sequence[Mapping[str, Any]] | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        n: int = 1,
        stop: Sequence[str] | None = None,
    ) -> None:
        self.signature = ensure_signature(signature)
        self.lm = lm
        # The prompt format this predictor is bound to (a trained student's, set by
        # binding); None: the format in force (``settings().format``, else chat).
        self.format: Format | None = None
        self.demos: list[Example] = [Example(d) for d in (demos or [])]
        self.config: dict[str, Any] = {}
        self.update_config(temperature=temperature, max_tokens=max_tokens, n=n, stop=stop)

    def update_config(self, **config: Any) -> None:
        unknown = sorted(set(config) - set(_CONFIG_KEYS))
        if unknown:
            raise TypeError(f"unknown sampling option(s) {unknown}; known: {list(_CONFIG_KEYS)}")
        if config.get("n") is not None and (not isinstance(config["n"], int) or config["n"] < 1):
            raise ValueError(f"n must be a positive integer, got {config['n']!r}")
        if isinstance(config.get("stop"), str):
            config["stop"] = [config["stop"]]
        self.config.update({k: v for k, v in config.items() if v is not None})

    def reset(self) -> None:
        self.lm = None
        self.format = None
        self.demos = []

    # -- calling -------------------------------------------------------------------
    def _prepare(self, kwargs: dict[str, Any]):
        config = {**self.config, **(kwargs.pop("config", None) or {})}
        demos = kwargs.pop("demos", None)
        demos = self.demos if demos is None else demos
        lm = kwargs.pop("lm", None) or self.lm or settings().lm
        if lm is None:
            raise RuntimeError(
                f"no LM for {self!r}: call ap.configure(lm=...), use `with ap.context(lm=...)`, "
                "or set predictor.lm"
            )
        inputs = self._check_inputs(kwargs)
        # Inside a re-run after a failed Assert/Suggest, the call it targets gets the
        # rejected outputs and the feedback as extra inputs.
        signature, inputs, calls = start_call(self, self.signature, inputs)
        config.update(sampling_of(calls))  # a BestOfN attempt's rollout and temperature
        fmt = self.format or default_format()
        messages = fmt.render(signature, demos, inputs)
        from apprentice.lm.base import Request

        stop = config.get("stop")
        request = Request(
            messages=tuple(messages),
            temperature=config.get("temperature"),
            max_tokens=config.get("max_tokens"),
            n=config.get("n", 1),
            stop=tuple(stop) if stop else None,
            top_p=config.get("top_p"),
            seed=config.get("seed"),
            rollout=config.get("rollout", 0),
            meta=RequestMeta(signature, inputs, fmt),
        )
        return lm, fmt, demos, inputs, calls, request

    def _check_inputs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        expected = self.signature.input_fields
        missing = [n for n in expected if n not in kwargs]
        extra = [n for n in kwargs if n not in expected]
        if missing or extra:
            problems = []
            if missing:
                problems.append(f"missing input(s) {missing}")
            if extra:
                problems.append(f"unexpected input(s) {extra}")
            raise TypeError(
                f"{type(self).__name__}({self.signature.signature_string()}): {'; '.join(problems)}; "
                f"expected inputs {list(expected)}"
            )
        return kwargs

    def forward(self, *args: Any, **kwargs: Any) -> Prediction:
        if args:
            raise TypeError(
                f"{type(self).__name__} takes inputs as keywords, e.g. "
                f"{', '.join(f'{n}=...' for n in self.signature.input_fields)}; got positional {args!r}"
            )
        lm, fmt, demos, inputs, calls, request = self._prepare(kwargs)
        start = time.perf_counter()
        try:
            tracer = current_tracer()
            if tracer is None:
                response = lm.generate([request])[0]
            else:
                from apprentice.tracing import lm_span, record_response

                with lm_span(tracer, lm, request) as span:
                    response = lm.generate([request])[0]
                    record_response(span, lm, response)
        except Exception as exc:
            self._observe(lm, demos, inputs, request, None, [], start, exc, calls)
            raise
        return self._finish(lm, fmt, demos, inputs, request, response, start, calls)

    async def aforward(self, *args: Any, **kwargs: Any) -> Prediction:
        if args:
            raise TypeError(
                f"{type(self).__name__} takes inputs as keywords; got positional {args!r}"
            )
        lm, fmt, demos, inputs, calls, request = self._prepare(kwargs)
        start = time.perf_counter()
        try:
            tracer = current_tracer()
            if tracer is None:
                response = (await lm.agenerate([request]))[0]
            else:
                from apprentice.tracing import lm_span, record_response

                with lm_span(tracer, lm, request) as span:
                    response = (await lm.agenerate([request]))[0]
                    record_response(span, lm, response)
        except Exception as exc:
            self._observe(lm, demos, inputs, request, None, [], start, exc, calls)
            raise
        return self._finish(lm, fmt, demos, inputs, request, response, start, calls)

    def _finish(self, lm, fmt, demos, inputs, request, response, start, calls) -> Prediction:
        signature = request.meta.signature
        outputs: list[dict[str, Any]] = []
        first_error: ParseError | None = None
        for text in response.texts:
            try:
                outputs.append(fmt.parse(signature, text))
            except ParseError as exc:
                first_error = first_error or exc
        if not outputs:
            error = first_error or ParseError("", list(signature.output_fields), None, fmt.name)
            self._observe(lm, demos, inputs, request, response, [], start, error, calls)
            raise error
        finish_call(self, calls, outputs[0])
        self._observe(lm, demos, inputs, request, response, outputs, start, None, calls)
        return Prediction.from_completions(outputs)

    def _observe(self, lm, demos, inputs, request, response, outputs, start, error, calls) -> None:
        observers = settings().observers
        if not observers:
            return
        record = StepRecord(
            predictor=self,
            signature=request.meta.signature,
            demos=[dict(d) for d in demos],
            inputs=dict(inputs),
            messages=list(request.messages),
            completions=list(response.texts) if response is not None else [],
            outputs=outputs,
            lm_identity=lm.identity,
            prompt_tokens=response.usage.prompt_tokens if response is not None else 0,
            completion_tokens=response.usage.completion_tokens if response is not None else 0,
            latency_s=time.perf_counter() - start,
            cached=bool(response is not None and response.cached),
            error=error,
            extra={"calls": calls} if calls else {},
        )
        for observer in observers:
            observer(record)

    # -- save / load -------------------------------------------------------------------
    def dump_predictor_state(self) -> dict[str, Any]:
        lm_config = None
        if self.lm is not None:
            try:
                lm_config = self.lm.to_config()
            except NotImplementedError:
                log.warning("%r cannot be saved; the predictor is saved without its LM", self.lm)
        return {
            "signature": self.signature.to_dict(),
            "demos": [
                to_jsonable(d.to_dict() if isinstance(d, Example) else dict(d)) for d in self.demos
            ],
            "config": dict(self.config),
            "lm": lm_config,
            "format": self._format_name(),
        }

    def _format_name(self) -> str | None:
        from apprentice.formats import FORMATS

        if self.format is None:
            return None
        if FORMATS.get(self.format.name) is not type(self.format):
            log.warning(
                "%r uses format %r, which is not one of %s: saved without it",
                self,
                self.format,
                sorted(FORMATS),
            )
            return None
        return self.format.name

    def load_predictor_state(
        self,
        state: dict[str, Any],
        *,
        where: str = "state",
        trusted: bool = False,
        allowed_endpoints: Mapping[str, str] | None = None,
    ) -> Predict:
        """Restores one predictor's saved state; checks all of it before changing anything."""
        prepared = self.prepare_predictor_state(
            state, where=where, trusted=trusted, allowed_endpoints=allowed_endpoints
        )
        return self.apply_predictor_state(prepared)

    def prepare_predictor_state(
        self,
        state: Any,
        *,
        where: str = "state",
        trusted: bool = False,
        allowed_endpoints: Mapping[str, str] | None = None,
    ) -> _PreparedState:
        """Everything ``apply_predictor_state`` will set, built and checked; changes nothing.
        A malformed entry raises ProgramFileError; an LM the file may not choose,
        UntrustedLMError."""
        from apprentice.lm.registry import UntrustedLMError, lm_from_config
        from apprentice.predict.saved_state import read_predictor_state

        saved = read_predictor_state(state, where)
        names = [f.name for f in saved.signature.fields]
        if names != list(self.signature.fields):
            raise ProgramFileError(
                f"{where}: saved fields {names} differ from the program's "
                f"{list(self.signature.fields)}"
            )
        signature = self.signature
        instructions = saved.signature.instructions
        if instructions is not None and instructions != signature._instructions:
            signature = signature.with_instructions(instructions)
        for spec in saved.signature.fields:
            if spec.desc != signature.fields[spec.name].desc:
                signature = signature.with_field_desc(spec.name, spec.desc)
        lm = None
        if saved.lm is not None:
            try:
                lm = lm_from_config(
                    saved.lm, trusted=trusted, allowed_endpoints=allowed_endpoints, where=where
                )
            except UntrustedLMError:
                raise
            except (TypeError, ValueError) as exc:
                text = str(exc) if str(exc).startswith(where) else f"{where}: lm: {exc}"
                raise ProgramFileError(text) from None
        config = saved.config.model_dump(exclude_none=True)
        fmt = None
        if saved.format is not None:
            from apprentice.formats import format_named

            try:
                fmt = format_named(saved.format)
            except ValueError as exc:
                raise ProgramFileError(f"{where}: format: {exc}") from None
        return _PreparedState(signature, [Example(d) for d in saved.demos], config, lm, fmt)

    def apply_predictor_state(self, prepared: _PreparedState) -> Predict:
        """Sets what ``prepare_predictor_state`` built; cannot fail."""
        self.signature = prepared.signature
        self.demos = prepared.demos
        self.config = dict(prepared.config)
        if prepared.lm is not None:
            self.lm = prepared.lm
        if prepared.format is not None:
            self.format = prepared.format
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.signature.signature_string()!r})"
