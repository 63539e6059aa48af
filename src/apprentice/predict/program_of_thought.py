"""ProgramOfThought: the model writes Python, a sandbox runs it, the answer comes from its output.

Three predictors, each an ordinary Predict, so every call is a trace step and a training
row (a student learns to write the code, to fix it, and to read its output):

- ``generate``: inputs -> ``code``;
- ``regenerate``: inputs, ``previous_code``, ``error`` -> ``code``, after a failed run;
- ``answer``: inputs, ``code``, ``code_output`` -> the signature's outputs.

The code runs in ``apprentice.sandbox.Sandbox`` (no network, files, processes; CPU,
memory, output and wall-clock limits). If no sandbox can be built, the first call raises
``SandboxUnavailableError``: model-written code is never run unsandboxed.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from apprentice.example import Prediction
from apprentice.module import Module
from apprentice.predict.assertions import Attempt, attempt_scope
from apprentice.predict.predict import Predict
from apprentice.signature import InputField, OutputField, Signature, ensure_signature

__all__ = ["ProgramOfThought", "ProgramOfThoughtError", "extract_code"]

CODE_DESC = (
    "a Python 3 program that computes the answer from the inputs and prints it; standard "
    "library only, no input(), files, network or subprocesses"
)
_WRITE = (
    "Write a Python program that computes {outputs} from {inputs} and prints the result. "
    "It runs in a sandbox with the standard library only."
)
_FIX = "The previous program failed with the error shown. Write a corrected program."
_READ = "Give {outputs} using the printed output of a program that computed them."
_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)


class ProgramOfThoughtError(RuntimeError):
    """Every attempt's code failed; the last code and error are attached."""

    def __init__(self, message: str, code: str, error: str) -> None:
        super().__init__(message)
        self.code = code
        self.error = error


def extract_code(text: str) -> str:
    """The program inside a Markdown code fence, or the text itself when there is none."""
    match = _FENCE.search(text or "")
    return (match.group(1) if match else text or "").strip()


def _derive(
    base: type[Signature],
    extra_inputs: dict[str, str],
    outputs: dict[str, Any] | None,
    instructions: str,
) -> type[Signature]:
    """``base``'s inputs plus ``extra_inputs``; ``outputs`` (name -> field) replace its outputs."""
    signature = base
    for name in base.output_fields:
        signature = signature.delete(name)
    for name, desc in extra_inputs.items():
        signature = signature.append(name, InputField(desc=desc))
    for name, (field, annotation) in (outputs or {}).items():
        signature = signature.append(name, field, annotation)
    return signature.with_instructions(instructions)


class ProgramOfThought(Module):
    """``ProgramOfThought("question -> answer", max_iters=3)``: up to ``max_iters`` programs
    (one generate, then regenerates) until one runs; then ``answer`` reads its output.

    ``sandbox`` defaults to ``Sandbox()`` with its default limits. The model sees the last
    ``max_error_chars`` of a failed run's error: a long traceback would swamp its prompt. The Prediction carries the
    signature's outputs plus ``code`` and ``code_output``. When every attempt fails,
    ``ProgramOfThoughtError`` is raised (so a teacher trace with broken code is dropped).
    """

    def __init__(
        self,
        signature: str | type[Signature],
        max_iters: int = 3,
        *,
        sandbox: Any = None,
        max_error_chars: int = 600,
    ) -> None:
        if not isinstance(max_iters, int) or max_iters < 1:
            raise ValueError(f"max_iters must be a positive integer, got {max_iters!r}")
        base = ensure_signature(signature)
        clash = {"code", "previous_code", "error", "code_output"} & set(base.fields)
        if clash:
            raise ValueError(f"ProgramOfThought uses the field names {sorted(clash)}; rename them")
        ask = _WRITE.format(
            inputs=", ".join(base.input_fields), outputs=", ".join(base.output_fields)
        )
        given = (base._instructions or "").strip()  # the user's own, not the default text
        head = f"{given}\n\n" if given else ""
        code_out = {"code": (OutputField(desc=CODE_DESC), str)}
        self.generate = Predict(_derive(base, {}, code_out, head + ask))
        self.regenerate = Predict(
            _derive(
                base,
                {"previous_code": "the program that failed", "error": "what went wrong"},
                code_out,
                f"{head}{ask} {_FIX}",
            )
        )
        outputs = {
            n: (OutputField(desc=f.desc), f.annotation) for n, f in base.output_fields.items()
        }
        self.answer = Predict(
            _derive(
                base,
                {"code": "the program", "code_output": "what the program printed"},
                outputs,
                head + _READ.format(outputs=", ".join(base.output_fields)),
            )
        )
        self.signature = base
        self.max_iters = max_iters
        self.sandbox = sandbox
        self.max_error_chars = max_error_chars

    def _box(self):
        if self.sandbox is None:
            from apprentice.sandbox import Sandbox

            self.sandbox = Sandbox()
        return self.sandbox

    def forward(self, **inputs: Any) -> Prediction:
        write = functools.partial(self.generate, **inputs)
        for number in range(1, self.max_iters + 1):
            attempt = Attempt(f"ProgramOfThought program {number}")
            with attempt_scope(attempt):
                code = extract_code(write().code)
            result = self._box().run(code)
            if result.ok:
                break
            error = result.error_message(self.max_error_chars)
            # A program that failed is never a demo or a training row (its step is marked
            # rejected); the call that fixes it, from its code and error, is.
            last_line = error.strip().splitlines()[-1] if error.strip() else "failed"
            attempt.reject(f"ProgramOfThought: program {number} failed: {last_line[:200]}")
            if number == self.max_iters:
                raise ProgramOfThoughtError(
                    f"ProgramOfThought: all {self.max_iters} program(s) failed; the last one "
                    f"failed with:\n{error}",
                    code,
                    error,
                )
            write = functools.partial(self.regenerate, **inputs, previous_code=code, error=error)
        final = self.answer(**inputs, code=code, code_output=result.stdout.strip())
        outputs = {name: final[name] for name in self.signature.output_fields}
        return Prediction(**outputs, code=code, code_output=result.stdout.strip())
