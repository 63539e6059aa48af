"""The baked format: the chat format's sections without its system message or demos.

A trained student has learned what the full prompt tells it (the fields' types and
descriptions, the layout, the instructions, the demos), so training and serving it on the
inputs alone spends fewer prompt tokens on every call and every row ("prompt baking":
the weights carry what the prompt said). The prompt is an empty system message and one
user message: the input sections and the reply's order, which names the output fields and so tells apart two
steps that read the same inputs. Replies are the chat format's sections, parsed the same
way. Steps that read and write the same field names cannot be told apart, so one adapter
may not hold two such predictors (``dataset.build`` refuses it). Instructions and demos
do not reach a student served this way: a prompt optimizer run after it changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from apprentice.formats.chat import ChatFormat

if TYPE_CHECKING:
    from apprentice.lm.base import Message
    from apprentice.signature import Signature

__all__ = ["BakedFormat", "layout_key"]


class BakedFormat(ChatFormat):
    name = "baked"
    version = 1

    def render(
        self,
        signature: type[Signature],
        demos: Sequence[Mapping[str, Any]],
        inputs: Mapping[str, Any],
    ) -> list[Message]:
        # An empty system message, not none: without one, some chat templates write their
        # own (SmolLM2's "You are a helpful AI assistant named SmolLM...", Qwen2.5's), ~30
        # tokens on every call. A template that refuses a system message drops it.
        return [
            {"role": "system", "content": ""},
            {"role": "user", "content": self.user_message(signature, inputs)},
        ]


def layout_key(signature: type[Signature]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What a baked prompt shows of a signature: its input and output field names."""
    return tuple(signature.input_fields), tuple(signature.output_fields)
