"""Messages -> the prompt text a model reads: one function for training rows and for every
backend that serves a student, so the student is trained on exactly the prompt it is served.

A causal student's prompt comes from a chat template: the tokenizer's own, or one given
instead (``chat_template``: its Jinja text), or none at all (``NO_TEMPLATE``: the plain
layout of ``messages_to_prompt``, also used when the tokenizer has no template). Two things
real templates do are handled here, the same way for training and serving:

- a template that refuses a system message (Gemma-2, Mistral v0.1/v0.2 before their v1
  templates) gets the system text folded into the first user turn, followed by a blank line;
- a template that writes a date (Llama 3.x: ``Today Date:``) is rendered with the variables
  in ``template_vars`` — the dataset fixes ``date_string`` when it is built and records it,
  and the bound student is served with the same one, so a row rendered today and a prompt
  served tomorrow are the same text.

A seq2seq student's encoder reads ``seq2seq_prompt``: no template, only characters a T5
tokenizer keeps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "NO_TEMPLATE",
    "Kind",
    "PromptTemplate",
    "fold_system",
    "messages_to_prompt",
    "render_prompt",
    "seq2seq_prompt",
]

Kind = Literal["causal", "seq2seq"]
NO_TEMPLATE = "none"  # student.chat_template: none -> the plain layout, whatever the tokenizer has


@dataclass(frozen=True)
class PromptTemplate:
    """How a causal student's messages become its prompt, fixed when its dataset is built and
    kept with it: ``chat_template`` (Jinja text; ``NO_TEMPLATE``; None: the tokenizer's own)
    and the template's ``variables`` (``date_string``). The trainer renders rows with it and
    the bound student LM serves with it (saved in program.json)."""

    chat_template: str | None = None
    variables: tuple[tuple[str, str], ...] = ()

    def options(self) -> dict[str, Any]:
        """``render_prompt``'s keyword arguments."""
        return {"chat_template": self.chat_template, "template_vars": dict(self.variables)}

    def to_config(self) -> dict[str, Any]:
        return {"chat_template": self.chat_template, "variables": dict(self.variables)}

    @classmethod
    def from_config(cls, config: PromptTemplate | Mapping[str, Any] | None) -> PromptTemplate:
        if config is None or isinstance(config, PromptTemplate):
            return config or cls()
        unknown = sorted(set(config) - {"chat_template", "variables"})
        template, variables = config.get("chat_template"), config.get("variables") or {}
        if (
            unknown
            or not isinstance(template, (str, type(None)))
            or not isinstance(variables, Mapping)
        ):
            raise ValueError(
                f"a prompt template is {{'chat_template': str or None, 'variables': {{name: "
                f"value}}}}, got {dict(config)!r:.200}"
            )
        return cls(template, tuple(sorted((str(k), str(v)) for k, v in variables.items())))


def messages_to_prompt(messages: Sequence[Mapping[str, str]]) -> str:
    """The plain layout: each message as a ``<|role|>`` line and its content, then
    ``<|assistant|>``; for text-completion endpoints and students without a chat template.
    Used both at inference and for training rows."""
    parts = [f"<|{m['role']}|>\n{m['content']}" for m in messages]
    return "\n".join(parts) + "\n<|assistant|>\n"


def seq2seq_prompt(messages: Sequence[Mapping[str, str]]) -> str:
    """The encoder input of a seq2seq student: each message as ``role: content``, blank lines
    between. Only characters a T5 tokenizer keeps (``messages_to_prompt``'s ``<|role|>``
    would be ``<unk>`` there; its newlines become spaces, which is harmless here)."""
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def fold_system(messages: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """The messages with a leading system message folded into the first user turn."""
    out = [dict(m) for m in messages]
    if len(out) > 1 and out[0]["role"] == "system" and out[1]["role"] == "user":
        system = out.pop(0)
        if system["content"]:  # an empty one (the baked format's) is dropped
            out[0]["content"] = f"{system['content']}\n\n{out[0]['content']}"
    return out


def render_prompt(
    messages: Sequence[Mapping[str, str]],
    tokenizer: Any,
    kind: Kind = "causal",
    *,
    chat_template: str | None = None,
    template_vars: Mapping[str, Any] | None = None,
) -> str:
    """The prompt text for a student: ``seq2seq_prompt`` for seq2seq students; for causal ones
    the chat template (``chat_template``, else the tokenizer's; ``NO_TEMPLATE`` or none at
    all: ``messages_to_prompt``), rendered with ``template_vars``."""
    if kind == "seq2seq":
        return seq2seq_prompt(messages)
    template = chat_template if chat_template is not None else tokenizer.chat_template
    if not template or template == NO_TEMPLATE:
        return messages_to_prompt(messages)
    import jinja2

    rows = [dict(m) for m in messages]
    options = {"tokenize": False, "add_generation_prompt": True, "chat_template": template}
    try:
        return tokenizer.apply_chat_template(rows, **options, **dict(template_vars or {}))
    except jinja2.TemplateError as exc:
        folded = fold_system(rows)
        if folded == rows:  # no system message to blame
            raise ValueError(f"the chat template refused the messages: {exc}") from None
        try:
            return tokenizer.apply_chat_template(folded, **options, **dict(template_vars or {}))
        except jinja2.TemplateError as again:
            raise ValueError(
                f"the chat template refused the messages, also with the system message folded "
                f"into the first user turn: {again}; give student.chat_template (a Jinja "
                f"template, or '{NO_TEMPLATE}' for the plain layout)"
            ) from None
