"""What every format provides: render a prompt, parse a completion, render a training row.

The same object renders the prompt at inference and the SFT row at training time, so a
student is trained on exactly the prompts it will later see.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from apprentice.lm.base import Message
    from apprentice.signature import Signature

__all__ = ["Format", "ParseError", "SFTRow"]


class ParseError(ValueError):
    """A completion that does not fit the signature. Carries the raw text and what was wrong."""

    def __init__(
        self,
        raw: str,
        missing: Sequence[str] = (),
        invalid: Mapping[str, str] | None = None,
        format_name: str = "",
    ) -> None:
        self.raw = raw
        self.missing = list(missing)
        self.invalid = dict(invalid or {})
        problems = []
        if self.missing:
            problems.append(f"missing field(s) {self.missing}")
        for name, why in self.invalid.items():
            problems.append(f"field {name!r}: {why}")
        shown = raw if len(raw) <= 300 else raw[:297] + "..."
        where = f" ({format_name} format)" if format_name else ""
        super().__init__(
            f"could not parse completion{where}: {'; '.join(problems)}; completion was {shown!r}"
        )


@dataclass(frozen=True)
class SFTRow:
    """One supervised example: the prompt messages and the target completion."""

    messages: list[Message]
    completion: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"messages": self.messages, "completion": self.completion, **self.meta}


class Format:
    """Base class. A format is stateless: one instance can serve every thread."""

    name = "base"
    version = 1

    def render(
        self,
        signature: type[Signature],
        demos: Sequence[Mapping[str, Any]],
        inputs: Mapping[str, Any],
    ) -> list[Message]:
        raise NotImplementedError

    def render_outputs(self, signature: type[Signature], outputs: Mapping[str, Any]) -> str:
        raise NotImplementedError

    def parse(self, signature: type[Signature], completion: str) -> dict[str, Any]:
        raise NotImplementedError

    def render_sft(
        self,
        signature: type[Signature],
        demos: Sequence[Mapping[str, Any]],
        inputs: Mapping[str, Any],
        outputs: Mapping[str, Any],
    ) -> SFTRow:
        return SFTRow(
            messages=self.render(signature, demos, inputs),
            completion=self.render_outputs(signature, outputs),
            meta={"format": self.name, "format_version": self.version},
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
