"""ScriptedLM: a teacher written as a Python function, for tests and the offline demo.

It is not a mock of the LM layer: requests go through BaseLM (usage, history, optional
cache) and the answer is rendered into text by the active format, so a program's real
parse path runs on it, exactly as it would on a hosted model's reply.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from apprentice.fingerprint import code_fingerprint
from apprentice.lm.base import BaseLM, LMError, Request, Response, Usage

__all__ = ["ScriptedLM"]

# fn(signature, inputs) -> dict of output values, or a str taken as the raw completion.
ScriptFn = Callable[[Any, dict[str, Any]], "dict[str, Any] | str"]


class ScriptedLM(BaseLM):
    backend = "scripted"

    def __init__(self, fn: ScriptFn, *, model: str = "scripted", **options: Any) -> None:
        super().__init__(model, **options)
        if not callable(fn):
            raise TypeError(
                f"ScriptedLM needs a function fn(signature, inputs) -> dict, got {fn!r}"
            )
        self.fn = fn
        # The function's code is who answers: an edited or re-parametrised script is
        # another teacher (new cache keys; a trace store made by the old one is not reused).
        self.script_hash = code_fingerprint(fn)

    @property
    def identity(self) -> dict[str, Any]:
        return {**super().identity, "script": self.script_hash}

    def _generate(self, requests: list[Request]) -> list[Response | BaseException]:
        return [self._answer(r) for r in requests]

    def _answer(self, request: Request) -> Response | BaseException:
        meta = request.meta
        if meta is None or not hasattr(meta, "signature"):
            return LMError(
                "ScriptedLM answers predictor calls only: the request carries no signature "
                "(call it through Predict/ChainOfThought, not with raw messages)"
            )
        texts = []
        try:
            for _ in range(request.n):
                answer = self.fn(meta.signature, dict(meta.inputs))
                if isinstance(answer, str):
                    texts.append(answer)
                elif isinstance(answer, dict):
                    _check_outputs(meta.signature, answer)
                    texts.append(meta.format.render_outputs(meta.signature, answer))
                else:
                    raise TypeError(
                        f"ScriptedLM's function returned {answer!r}; return a dict or str"
                    )
        except Exception as exc:  # returned, not raised: BaseLM decides how failures surface
            return exc
        prompt_words = sum(len(m["content"].split()) for m in request.messages)
        # Whitespace words stand in for tokens: there is no tokenizer behind a script.
        usage = Usage(prompt_words, sum(len(t.split()) for t in texts))
        return Response(
            texts=texts, usage=usage, model=self.model, finish_reasons=["stop"] * len(texts)
        )


def _check_outputs(signature: Any, answer: dict[str, Any]) -> None:
    # A forgotten or misspelt key would otherwise render as "(not given)" and parse as a
    # plausible answer. Extra keys are allowed: one script may serve several signatures.
    missing = [name for name in signature.output_fields if name not in answer]
    if missing:
        raise ValueError(
            f"ScriptedLM's function returned {answer!r:.300}, which lacks output field(s) "
            f"{missing} of {signature.signature_string()!r}"
        )
