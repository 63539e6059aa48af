"""``apprentice distill RECIPE --dry-run``: what the teacher would cost, before it is paid.

The program runs on a sample of the examples the bootstrap would trace, with a stand-in LM
in the teacher's place: it answers every call with a placeholder reply of the right shape
(the first option of a Literal, 0 for a number, "..." for text), so the program's own
control flow decides how many calls an example makes. Prompt tokens are counted as
characters / 4, the usual rule for English text under GPT-style tokenizers; a reply's
tokens lie between the placeholder's (a floor) and ``teacher.max_tokens`` (a ceiling), so
the cost is given as that range, at ``teacher.price``, for ``bootstrap.attempts`` = 1 (each
retry of a failing example adds up to one more run). Nothing is sent anywhere and nothing
is written.
"""

from __future__ import annotations

import enum
import statistics
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from apprentice.formats.values import parse_value
from apprentice.lm.base import BaseLM, LMError, Request, Response
from apprentice.lm.usage import Usage
from apprentice.traces.capture import example_id, run_traced

__all__ = ["TeacherEstimate", "estimate_teacher"]

CHARS_PER_TOKEN = 4
# Tried in order for each output field: the first text the field's type accepts.
_PLACEHOLDERS = ("...", "0", "true", "[]", "{}")


@dataclass
class TeacherEstimate:
    examples: int  # examples the bootstrap would run (not traced yet)
    sampled: int
    ended_early: int  # sampled runs a placeholder reply could not carry to the end
    calls_per_example: float
    prompt_tokens_per_call: float
    reply_tokens_per_call: tuple[float, float]  # (placeholder floor, max_tokens ceiling)
    price: Any  # lm.usage.Price | None
    attempts: int

    @property
    def calls(self) -> float:
        return self.examples * self.calls_per_example

    def cost_usd(self) -> tuple[float, float] | None:
        if self.price is None:
            return None
        prompt = self.calls * self.prompt_tokens_per_call
        low, high = (self.calls * r for r in self.reply_tokens_per_call)
        return self.price.cost(prompt, low), self.price.cost(prompt, high)

    def text(self) -> str:
        lines = [
            f"teacher estimate (dry run, nothing sent): {self.examples} examples to trace, "
            f"from a sample of {self.sampled}",
            f"  calls: ~{self.calls:,.0f} ({self.calls_per_example:.2f} per example)",
            f"  prompt tokens: ~{self.calls * self.prompt_tokens_per_call:,.0f} "
            f"({self.prompt_tokens_per_call:.0f} per call, characters / {CHARS_PER_TOKEN})",
            f"  reply tokens: {self.calls * self.reply_tokens_per_call[0]:,.0f} to "
            f"{self.calls * self.reply_tokens_per_call[1]:,.0f} (placeholder replies to "
            "teacher.max_tokens)",
        ]
        cost = self.cost_usd()
        lines.append(
            f"  cost: ${cost[0]:,.4f} to ${cost[1]:,.4f} at teacher.price"
            if cost is not None
            else "  cost: unknown (no teacher.price in the recipe)"
        )
        if self.attempts > 1:
            lines.append(
                f"  bootstrap.attempts={self.attempts}: each failing example may run up to "
                f"{self.attempts} times"
            )
        if self.ended_early:
            lines.append(
                f"  {self.ended_early} of {self.sampled} sampled runs stopped at a placeholder "
                "reply: calls are a lower bound"
            )
        return "\n".join(lines)


class StandInLM(BaseLM):
    """Answers each predictor call with a placeholder reply that parses; counts characters."""

    backend = "stand-in"

    def __init__(self) -> None:
        super().__init__("stand-in", cache=False)

    def _generate(self, requests: list[Request]) -> list[Response | BaseException]:
        return [self._answer(r) for r in requests]

    def _answer(self, request: Request) -> Response | BaseException:
        meta = request.meta
        prompt_chars = sum(len(m["content"]) for m in request.messages)
        if meta is None or not hasattr(meta, "signature"):
            return LMError("the stand-in LM answers predictor calls only")
        values = {}
        for name, field in meta.signature.output_fields.items():
            value = _placeholder(field.annotation)
            if value is _NONE:
                return LMError(f"no placeholder for output field {name!r}")
            values[name] = value
        texts = [meta.format.render_outputs(meta.signature, values)] * request.n
        usage = Usage(_tokens(prompt_chars), sum(_tokens(len(t)) for t in texts))
        return Response(texts=texts, usage=usage, model=self.model, finish_reasons=["stop"])


_NONE = object()


def _placeholder(annotation: Any) -> Any:
    candidates = [str(o) for o in _options(annotation)] + list(_PLACEHOLDERS)
    for text in candidates:
        try:
            return parse_value(text, annotation)
        except (ValueError, TypeError):
            continue
    return _NONE


def _options(annotation: Any) -> list[Any]:
    """A Literal's values or an Enum's, wherever they sit in ``annotation``."""
    if typing.get_origin(annotation) is Literal:
        return list(typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [m.value for m in annotation]
    return [o for arg in typing.get_args(annotation) for o in _options(arg)]


def _tokens(chars: int) -> int:
    return max(1, round(chars / CHARS_PER_TOKEN))


def estimate_teacher(recipe: Any, root: Path, *, sample: int = 20) -> TeacherEstimate:
    """The estimate for ``recipe`` run in ``root`` (examples already traced there are
    left out, as the bootstrap would)."""
    from apprentice.lm.usage import Price
    from apprentice.traces.store import TraceStore

    program = recipe.make_program()
    examples = recipe.load_split("train")
    traces = root / "traces"
    done = set()
    if (traces / "traces.jsonl").exists():
        done = {t.example_id for t in TraceStore(traces) if t.ok}
    todo = [e for e in examples if example_id(e) not in done]
    lm = StandInLM()
    program.set_lm(lm)
    calls, ended = [], 0
    chosen = todo[:sample]
    for example in chosen:
        trace = run_traced(program, example)
        calls.append(len(trace.steps))
        ended += trace.error is not None
    summary = lm.usage.summary()
    made = max(1, summary["calls"] or 0)
    teacher = recipe.teacher
    reply_floor = (summary["completion_tokens"] or 0) / made
    ceiling = float(teacher.max_tokens) if teacher.max_tokens else reply_floor
    return TeacherEstimate(
        examples=len(todo),
        sampled=len(chosen),
        ended_early=ended,
        calls_per_example=statistics.fmean(calls) if calls else 0.0,
        prompt_tokens_per_call=(summary["prompt_tokens"] or 0) / made,
        reply_tokens_per_call=(reply_floor, max(ceiling, reply_floor)),
        price=Price(**teacher.price) if teacher.price else None,
        attempts=recipe.bootstrap.attempts,
    )
