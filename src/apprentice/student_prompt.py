"""What a run decides about its student's prompts before anything is trained: the format
(``dataset.format``, ``auto`` picking by the student's kind), the chat template
(``student.chat_template``), whether ``train.max_length`` fits the student's context, and
how many rows are too long for it. The pipeline records the format, the template and the
length count in the dataset manifest; training and binding read them from there."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from apprentice.formats.base import Format
    from apprentice.formats.prompt import PromptTemplate

__all__ = ["check_context", "length_check", "prompt_template", "student_format", "too_long"]


def student_format(name: str, student: str, tiny: Any = None, loading: Any = None) -> Format:
    """The format ``name`` (``dataset.format``); ``auto`` is the T5 format for a seq2seq
    student (a T5 tokenizer keeps no newlines or braces) and the chat format otherwise.
    ``loading`` (``StudentLoading``): the revision and remote code its config is read with."""
    from apprentice.formats import format_named

    if name in ("auto", "baked"):
        if tiny is not None:
            kind = tiny.kind
        else:
            from apprentice.train.students import kind_of_model

            kind = kind_of_model(student, loading)
        if name == "baked" and kind == "seq2seq":
            raise ValueError(
                f"format 'baked' is a chat format, and student {student!r} is a seq2seq (T5) "
                "model, whose tokenizer drops its newlines: use dataset.format 't5' or 'auto'"
            )
        if name == "auto":
            name = "t5" if kind == "seq2seq" else "chat"
    return format_named(name)


def check_context(train: Any, student: str, tiny: Any = None, loading: Any = None) -> None:
    """Refuses a ``train.max_length`` above the student's context before anything runs,
    when the student's files are on this machine (a local folder, or a hub model in the
    local cache); otherwise the trainer checks it when it loads the student."""
    if tiny is not None or str(student).endswith(".gguf"):
        return
    from apprentice.model_context import local_context_length
    from apprentice.train.data import row_limit

    context = local_context_length(student, _hub_options(loading))
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


Rows = Mapping[str, Sequence[Mapping[str, Any]]]


def length_check(
    student: str, tiny: Any, train: Any, loading: Any = None
) -> Callable[[Rows, PromptTemplate], dict[str, Any]]:
    """A function that counts, per split, the dataset rows too long for the student: the
    rule training applies (``dataset.tokenize``: a row over ``train.max_length`` or the
    student's context, or a target over ``train.max_target_length``, is dropped, never cut),
    run when the dataset is built so its manifest and the report say it before training.
    A tiny student's tokenizer is trained from these rows in the train stage, and a hub
    student not on this machine is never downloaded for this: their rows are counted by
    training alone (the adapter's metrics), and the manifest says why."""

    def check(splits: Rows, template: PromptTemplate) -> dict[str, Any]:
        if tiny is not None:
            return {
                "checked": False,
                "why": "a tiny student's tokenizer is trained in the train stage",
            }
        loaded = _local_tokenizer(student, _hub_options(loading))
        if isinstance(loaded, str):
            return {"checked": False, "why": loaded}
        config, tokenizer = loaded
        from apprentice.dataset.tokenize import tokenize_rows
        from apprentice.model_context import context_length
        from apprentice.train.data import row_limit
        from apprentice.train.students import student_kind

        limit = row_limit(train, context_length(config, tokenizer), student)
        counts = {}
        for name, rows in splits.items():
            _, report = tokenize_rows(
                rows,
                tokenizer,
                kind=student_kind(config),
                max_length=limit,
                max_target_length=train.max_target_length,
                template=template,
            )
            counts[name] = report.to_dict()
        return {
            "checked": True,
            "max_length": limit,
            "max_target_length": train.max_target_length,
            "splits": counts,
        }

    return check


def too_long(lengths: Mapping[str, Any]) -> dict[str, int] | None:
    """Per split, the rows ``length_check`` found too long; None where it could not count."""
    if not lengths.get("checked"):
        return None
    return {
        split: r["prompts_too_long"] + r["targets_too_long"]
        for split, r in lengths["splits"].items()
    }


def _hub_options(loading: Any) -> dict[str, Any]:
    """The revision and remote-code options of a ``StudentLoading`` (None: none)."""
    return loading.hub_options() if loading is not None else {}


def _local_tokenizer(student: str, hub_options: dict[str, Any]) -> tuple[Any, Any] | str:
    """(config, tokenizer) of a student whose files are on this machine, else why not."""
    from transformers import AutoConfig, AutoTokenizer

    from apprentice.gguf import GGUFError, resolve_model

    try:
        name = str(resolve_model(student))
        config = AutoConfig.from_pretrained(name, local_files_only=True, **hub_options)
        return config, AutoTokenizer.from_pretrained(name, local_files_only=True, **hub_options)
    except (GGUFError, OSError, ValueError) as exc:
        return f"the student's tokenizer is not on this machine ({str(exc)[:200]})"
