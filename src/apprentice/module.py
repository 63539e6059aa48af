"""Module: a composable program part. Predictors are found by walking its attributes."""

from __future__ import annotations

import asyncio
import contextvars
import copy
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from apprentice.formats.base import Format
    from apprentice.lm.base import BaseLM

__all__ = ["Module", "Predictor", "ProgramFileError"]

log = logging.getLogger(__name__)

PROGRAM_SCHEMA = "apprentice.program"
PROGRAM_VERSION = 1


class ProgramFileError(ValueError):
    """A saved program that does not fit the program it is loaded into."""


class Module:
    """Subclass it, create sub-modules and predictors in ``__init__``, write ``forward``."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    async def aforward(self, *args: Any, **kwargs: Any) -> Any:
        """Async twin of ``forward``. By default runs ``forward`` in a worker thread with
        this task's settings; predictors override it with a native async call."""
        ctx = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: ctx.run(self.forward, *args, **kwargs))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # The outermost call re-runs forward when an ap.Assert/ap.Suggest fails inside it.
        from apprentice.predict.assertions import call_module

        return call_module(self, args, kwargs)

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        from apprentice.predict.assertions import acall_module

        return await acall_module(self, args, kwargs)

    # -- structure ------------------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, Any]]:
        """Attributes that hold modules, directly or in lists, tuples and dicts."""
        for name, value in vars(self).items():
            if name.startswith("_"):
                continue
            yield from _walk(name, value)

    def named_predictors(self) -> list[tuple[str, Predictor]]:
        """Every predictor with its stable dotted path, e.g. ``hops.0.generate_query``."""
        found: list[tuple[str, Predictor]] = []
        seen: set[int] = set()

        def visit(prefix: str, module: Module) -> None:
            if id(module) in seen:
                return
            seen.add(id(module))
            if isinstance(module, Predictor):
                found.append((prefix or "self", module))
            for name, child in module.named_children():
                visit(f"{prefix}.{name}" if prefix else name, child)

        visit("", self)
        return found

    def _all_modules(self) -> list[Module]:
        """This module and every module under it, each once, parents first."""
        found: list[Module] = []
        seen: set[int] = set()

        def visit(module: Module) -> None:
            if id(module) in seen:
                return
            seen.add(id(module))
            found.append(module)
            for _, child in module.named_children():
                visit(child)

        visit(self)
        return found

    def predictors(self) -> list[Predictor]:
        return [p for _, p in self.named_predictors()]

    def set_lm(self, lm: BaseLM | None) -> None:
        """Binds every predictor of this program to ``lm``."""
        for predictor in self.predictors():
            predictor.lm = lm

    def set_format(self, fmt: Format | None) -> None:
        """Binds every predictor of this program to the prompt format ``fmt`` (None: the
        format in force, ``settings().format``)."""
        for predictor in self.predictors():
            predictor.format = fmt

    def get_lm(self) -> BaseLM | None:
        """The one LM all predictors are bound to; an error when they differ."""
        lms = {id(p.lm): p.lm for p in self.predictors()}
        if len(lms) > 1:
            raise ValueError(
                f"predictors of {type(self).__name__} use different LMs: {list(lms.values())}"
            )
        return next(iter(lms.values()), None)

    def deepcopy(self) -> Module:
        """A copy with its own demos and settings; LMs are shared, not copied."""
        return copy.deepcopy(self)

    def reset_copy(self) -> Module:
        new = self.deepcopy()
        for predictor in new.predictors():
            predictor.reset()
        return new

    # -- save / load (JSON, never pickle) -----------------------------------------
    def dump_state(self) -> dict[str, Any]:
        return {
            "schema": PROGRAM_SCHEMA,
            "version": PROGRAM_VERSION,
            "program": f"{type(self).__module__}.{type(self).__qualname__}",
            "predictors": {path: p.dump_predictor_state() for path, p in self.named_predictors()},
        }

    def load_state(
        self,
        state: dict[str, Any],
        *,
        source: str = "state",
        trusted: bool = False,
        allowed_endpoints: Mapping[str, str] | None = None,
    ) -> Module:
        """Restores ``state`` (``dump_state()``'s dict); ``trusted`` and ``allowed_endpoints``
        as in ``load``. Every check runs before anything changes."""
        if not isinstance(state, dict):
            raise ProgramFileError(
                f"{source} is not a saved apprentice program (a JSON {type(state).__name__}, "
                "not an object)"
            )
        if state.get("schema") != PROGRAM_SCHEMA:
            raise ProgramFileError(
                f"{source} is not a saved apprentice program (schema {state.get('schema')!r:.80})"
            )
        version = state.get("version", 0)
        if not isinstance(version, int) or isinstance(version, bool):
            raise ProgramFileError(f"{source}: version must be an integer, got {version!r:.80}")
        if version > PROGRAM_VERSION:
            raise ProgramFileError(
                f"{source} has program version {version}; this apprentice reads up to "
                f"{PROGRAM_VERSION}: upgrade apprentice"
            )
        saved = state.get("predictors", {})
        if not isinstance(saved, dict):
            raise ProgramFileError(
                f"{source}: predictors must be an object of path -> state, got "
                f"{type(saved).__name__}"
            )
        ours = dict(self.named_predictors())
        missing, extra = sorted(set(ours) - set(saved)), sorted(set(saved) - set(ours))
        if missing or extra:
            raise ProgramFileError(
                f"{source} does not match {type(self).__name__}: predictors missing from the file "
                f"{missing}, in the file but not in the program {extra}"
            )
        # Check and build everything first, then set it: a file that is wrong anywhere
        # leaves the program as it was.
        prepared = {
            path: predictor.prepare_predictor_state(
                saved[path],
                where=f"{source}:{path}",
                trusted=trusted,
                allowed_endpoints=allowed_endpoints,
            )
            for path, predictor in ours.items()
        }
        for path, predictor in ours.items():
            predictor.apply_predictor_state(prepared[path])
        for module in self._all_modules():
            module._rebuild_after_load()
        return self

    def _rebuild_after_load(self) -> None:
        """Called on every module of a program after ``load_state`` set its predictors:
        a module whose predictors hold something derived from the module's own
        construction (ReAct's tool list) re-derives it here. Must not fail."""

    def save(self, path: str | os.PathLike) -> Path:
        """Writes demos, instructions, sampling config and LM bindings as JSON (atomically)."""
        from apprentice.files import atomic_write

        return atomic_write(path, json.dumps(self.dump_state(), indent=2, ensure_ascii=False))

    def load(
        self,
        path: str | os.PathLike,
        *,
        trusted: bool = False,
        allowed_endpoints: Mapping[str, str] | None = None,
    ) -> Module:
        """Restores a saved program into this (freshly constructed) program; returns self.

        A program file may come from anywhere, so by default its LM bindings may not choose
        where prompts and keys go: an endpoint (``base_url``, ``api_key_env``) named in the
        file is refused unless ``allowed_endpoints`` maps that base URL to that key
        variable, e.g. ``{"http://127.0.0.1:8000/v1": "OPENAI_API_KEY"}``; a local model
        must be on this machine (no Hub download); ``cache`` may not name a file.
        ``trusted=True`` loads every setting as written: pass it for files you made. The
        rules in full: ``apprentice.lm.registry``.
        """
        path = Path(path)
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no saved program at {path}") from None
        except ValueError as exc:
            raise ProgramFileError(f"{path} is not valid JSON: {exc}") from None
        except RecursionError:
            raise ProgramFileError(
                f"{path} is nested too deeply to be a saved program (JSON deeper than "
                f"Python's recursion limit, {sys.getrecursionlimit()})"
            ) from None
        return self.load_state(
            state, source=str(path), trusted=trusted, allowed_endpoints=allowed_endpoints
        )

    def __repr__(self) -> str:
        inner = ", ".join(f"{path}={p!r}" for path, p in self.named_predictors())
        return f"{type(self).__name__}({inner})"


class Predictor(Module):
    """A module that calls an LM: the unit a trace records step by step, that carries demos,
    and that a trained student is bound to. ``Predict`` is the one every module builds on;
    it lives in ``apprentice.predict`` (this base keeps ``module`` free of that import)."""

    lm: BaseLM | None


def _walk(name: str, value: Any) -> Iterator[tuple[str, Module]]:
    if isinstance(value, Module):
        yield name, value
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _walk(f"{name}.{i}", item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(f"{name}.{key}", item)
