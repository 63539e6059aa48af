"""What a run decides about its student's prompts before anything is trained: the format
(``dataset.format``, ``auto`` picking by the student's kind), the chat template
(``student.chat_template``) and whether ``train.max_length`` fits the student's context.
The pipeline records the first two in the dataset manifest; training and binding read
them from there."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from apprentice.formats.base import Format
    from apprentice.formats.prompt import PromptTemplate

__all__ = ["check_context", "prompt_template", "student_format"]


def student_format(name: str, student: str, tiny: Any = None) -> Format:
    """The format ``name`` (``dataset.format``); ``auto`` is the T5 format for a seq2seq
    student (a T5 tokenizer keeps no newlines or braces) and the chat format otherwise."""
    from apprentice.formats import format_named

    if name == "auto":
        if tiny is not None:
            kind = tiny.kind
        else:
            from apprentice.train.students import kind_of_model

            kind = kind_of_model(student)
        name = "t5" if kind == "seq2seq" else "chat"
    return format_named(name)


def check_context(train: Any, student: str, tiny: Any = None) -> None:
    """Refuses a ``train.max_length`` above the student's context before anything runs,
    when the student's files are on this machine (a local folder, or a hub model in the
    local cache); otherwise the trainer checks it when it loads the student."""
    if tiny is not None or str(student).endswith(".gguf"):
        return
    from apprentice.model_context import local_context_length
    from apprentice.train.data import row_limit

    context = local_context_length(student)
    if context is not None:
        row_limit(train, context, student)


def prompt_template(value: str | None) -> PromptTemplate:
    """The chat template ``value`` names (``student.chat_template``): None for the
    tokenizer's own, ``none`` for the plain layout, Jinja text, or a file holding it."""
    from apprentice.formats.prompt import NO_TEMPLATE, PromptTemplate

    if value is None or value == NO_TEMPLATE or "{{" in value or "{%" in value:
        return PromptTemplate(value)
    path = Path(value).expanduser()
    if not path.is_file():
        raise ValueError(
            f"chat_template {value!r:.120} is not a file, not Jinja text (no '{{{{' or "
            f"'{{%') and not {NO_TEMPLATE!r}: give the template's file or its text"
        )
    return PromptTemplate(path.read_text())
