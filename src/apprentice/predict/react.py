"""ReAct: an agent that thinks, calls a tool, reads the observation, and repeats, then
answers from what it gathered.

Each turn is one call of the ``react`` predictor: the signature's inputs plus the
trajectory so far in, ``next_thought``, ``next_tool_name`` (typed: one of the tools or
``finish``) and ``next_tool_args`` (a JSON object) out. The named tool runs with the
arguments, validated against its Python signature, and what it returns, or why it could
not run, becomes the turn's observation. ``finish`` (or ``max_iters`` turns) ends the
loop; the ``extract`` predictor (ChainOfThought over the inputs and the trajectory) then
writes the signature's outputs.

Nothing the model writes crashes the loop: a reply that does not parse (an unknown tool
name, arguments that are not a JSON object) and arguments the tool's signature refuses
come back to the model as an observation that says what was wrong, and the turn counts
toward ``max_iters``. Only the tools' own exceptions and those are caught; an LM that
cannot be reached raises as in any predictor.

Truncation policy, for the trajectory shown to the model (every turn is kept in
``Prediction.trajectory``, and so in the trace):

1. each observation is cut to ``max_observation_chars`` characters, its head kept, with a
   note of how many characters were cut; the turn stores only that head, with the count in
   ``observation_cut``, so a huge tool result never reaches the trace store;
2. the turns shown are the newest ones whose rendering fits ``max_trajectory_chars``;
   older turns are dropped oldest first and replaced by one line that says which turns
   were left out (turns keep their numbers); the newest turn is always shown;
3. the signature's inputs are fields of their own and are never cut.

Distillation needs nothing special: every turn is a predictor call, so a trace holds one
step per turn (its input is the trajectory shown at that turn) plus the extract step, and
each becomes one training row; the whole episode is kept or dropped by the program's
metric like any trace.
"""

from __future__ import annotations

import inspect
import json
import logging
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from apprentice.example import Prediction
from apprentice.formats.base import ParseError
from apprentice.formats.values import to_jsonable
from apprentice.module import Module
from apprentice.predict.chain_of_thought import ChainOfThought
from apprentice.predict.predict import Predict
from apprentice.signature import InputField, OutputField, Signature, ensure_signature

__all__ = ["ReAct", "Tool", "render_trajectory"]

log = logging.getLogger(__name__)

FINISH = "finish"
_OWN_FIELDS = ("trajectory", "next_thought", "next_tool_name", "next_tool_args")


class Tool:
    """A Python callable the agent may call: ``Tool(fn, name=None, desc=None)``. Its name,
    docstring (first paragraph) and type hints are what the model is told about it; its
    parameters validate the arguments the model writes. Plain callables passed to ReAct
    are wrapped in a Tool."""

    def __init__(
        self, fn: Callable[..., Any], *, name: str | None = None, desc: str | None = None
    ) -> None:
        if not callable(fn):
            raise TypeError(f"a ReAct tool must be a callable, got {fn!r}")
        name = name or getattr(fn, "__name__", None)
        if not name or not name.isidentifier():
            raise ValueError(f"tool {fn!r} has no usable name ({name!r}); pass Tool(fn, name=...)")
        doc = inspect.getdoc(fn) or ""
        self.fn = fn
        self.name = name
        self.desc = desc if desc is not None else doc.split("\n\n")[0].replace("\n", " ").strip()
        self.args_model = _args_model(fn, name)  # a pydantic model of fn's parameters

    def args_schema(self) -> dict[str, Any]:
        """Each parameter's JSON schema, as the model is shown it."""
        schema = self.args_model.model_json_schema()
        props = schema.get("properties", {})
        return {k: {n: v for n, v in p.items() if n != "title"} for k, p in props.items()}

    def describe(self) -> str:
        args = json.dumps(self.args_schema(), ensure_ascii=False)
        return f"{self.name}: {self.desc} Arguments: {args}"

    def validate(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments as the tool's parameter types; ValueError says what is wrong."""
        from pydantic import ValidationError

        try:
            model = self.args_model.model_validate(dict(args))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}"
                for e in exc.errors()
            )
            raise ValueError(problems) from None
        return {name: getattr(model, name) for name in type(model).model_fields}

    def __call__(self, **kwargs: Any) -> Any:
        return self.fn(**kwargs)

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"


def _args_model(fn: Callable[..., Any], name: str) -> Any:
    from pydantic import ConfigDict, create_model

    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: describe those parameters as Any
        hints = {}
    fields: dict[str, Any] = {}
    extra = "forbid"
    for param in inspect.signature(fn).parameters.values():
        if param.kind is param.VAR_KEYWORD:
            extra = "allow"
            continue
        if param.kind is param.VAR_POSITIONAL:
            continue
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (hints.get(param.name, Any), default)
    return create_model(f"{name}_args", __config__=ConfigDict(extra=extra), **fields)


def _finish_tool(signature: type[Signature]) -> Tool:
    outputs = ", ".join(f"`{n}`" for n in signature.output_fields)

    def finish(**_: Any) -> str:  # arguments written for finish are ignored, not refused
        return "Done."

    return Tool(
        finish, desc=f"Ends the task: call it once you have what is needed to produce {outputs}."
    )


_AGENT_INTRO = "You work as an agent, one turn at a time."


def _instructions(task: str, signature: type[Signature], tools: Iterable[Tool]) -> str:
    """The react step's instructions: the task's own (``task``), then how to work as an
    agent and the tools, which are derived from the tools and rebuilt on load."""
    inputs = ", ".join(f"`{n}`" for n in signature.input_fields)
    listed = "\n".join(f"({i}) {tool.describe()}" for i, tool in enumerate(tools, 1))
    return (
        f"{task}\n\n"
        f"{_AGENT_INTRO} You get {inputs} and your trajectory so "
        "far. Each turn, write your next thought, then choose one tool and its arguments as "
        "a JSON object; the tool's result is added to your trajectory as an observation. "
        f"Call `{FINISH}` once you have gathered enough.\n\nTools:\n{listed}"
    )


def _clip(text: str, limit: int, already_cut: int = 0) -> str:
    """``text`` cut to ``limit`` characters, with a note of how many were cut, counting
    ``already_cut`` characters that a turn dropped before it was stored."""
    cut = already_cut + max(0, len(text) - limit)
    if not cut:
        return text
    return f"{text[:limit]}... [{cut} more characters cut]"


def _render_turn(number: int, turn: Mapping[str, Any], max_observation_chars: int) -> str:
    lines = [f"--- turn {number} ---"]
    if turn.get("tool_name") is not None:
        args = json.dumps(to_jsonable(turn.get("tool_args") or {}), ensure_ascii=False)
        lines += [f"thought: {turn.get('thought', '')}", f"tool: {turn['tool_name']}({args})"]
    observation = _clip(
        str(turn.get("observation", "")), max_observation_chars, turn.get("observation_cut", 0)
    )
    lines.append(f"observation: {observation}")
    return "\n".join(lines)


def render_trajectory(
    turns: list[Mapping[str, Any]],
    *,
    max_trajectory_chars: int = 6000,
    max_observation_chars: int = 1500,
) -> str:
    """The trajectory as the model sees it, cut by the policy in this module's docstring."""
    if not turns:
        return "(no turns yet)"
    rendered = [_render_turn(i, t, max_observation_chars) for i, t in enumerate(turns, 1)]
    kept = [rendered[-1]]
    size = len(rendered[-1])
    for text in reversed(rendered[:-1]):
        if size + len(text) + 2 > max_trajectory_chars:
            break
        kept.insert(0, text)
        size += len(text) + 2
    dropped = len(rendered) - len(kept)
    if dropped:
        span = "turn 1" if dropped == 1 else f"turns 1-{dropped}"
        kept.insert(0, f"({span} left out to fit the trajectory budget)")
    return "\n\n".join(kept)


def _explain(exc: ParseError, tool_names: list[str]) -> str:
    problems = [f"{name}: {why}" for name, why in exc.invalid.items()]
    if exc.missing:
        problems.append(f"missing field(s) {exc.missing}")
    return (
        f"Error: your reply could not be used ({'; '.join(problems)}). Reply with "
        f"next_thought, next_tool_name (one of {tool_names}) and next_tool_args (a JSON object)."
    )


class ReAct(Module):
    """``ReAct(signature, tools=[fn, ...], max_iters=5)``: see the module docstring."""

    def __init__(
        self,
        signature: str | type[Signature],
        tools: Iterable[Callable[..., Any] | Tool],
        max_iters: int = 5,
        *,
        max_trajectory_chars: int = 6000,
        max_observation_chars: int = 1500,
    ) -> None:
        self.signature = ensure_signature(signature)
        if max_iters < 1:
            raise ValueError(f"max_iters must be at least 1, got {max_iters}")
        clash = [n for n in _OWN_FIELDS if n in self.signature.fields]
        if clash:
            raise ValueError(
                f"ReAct adds the fields {list(_OWN_FIELDS)}; the signature already has {clash}: "
                "rename them"
            )
        tools = [t if isinstance(t, Tool) else Tool(t) for t in tools]
        names = [t.name for t in tools]
        if FINISH in names or len(set(names)) != len(names):
            raise ValueError(
                f"tool names must be unique and not {FINISH!r} (ReAct adds it): got {names}"
            )
        self.tools = {t.name: t for t in [*tools, _finish_tool(self.signature)]}
        self.max_iters = max_iters
        self.max_trajectory_chars = max_trajectory_chars
        self.max_observation_chars = max_observation_chars
        self.react = Predict(self._react_signature())
        extract = self.signature.append(
            "trajectory", InputField(desc="the agent's turns: thoughts, tool calls, observations")
        )
        self.extract = ChainOfThought(extract)

    def _react_signature(self) -> type[Signature]:
        base = self.signature
        for name in self.signature.output_fields:
            base = base.delete(name)
        names = tuple(self.tools)
        return (
            base.append("trajectory", InputField(desc="your turns so far"))
            .append("next_thought", OutputField(desc="what you know and what to do next"))
            .append("next_tool_name", OutputField(), Literal[names])
            .append("next_tool_args", OutputField(desc="the tool's arguments"), dict[str, Any])
            .with_instructions(
                _instructions(self.signature.instructions, self.signature, self.tools.values())
            )
        )

    def _rebuild_after_load(self) -> None:
        """A loaded program keeps the saved task instructions but lists this ReAct's tools:
        the file's tool list is that of the program that saved it."""
        loaded = self.react.signature.instructions
        task, intro, _ = loaded.rpartition(f"\n\n{_AGENT_INTRO}")
        if not intro:
            log.warning(
                "ReAct(%r): the loaded instructions of its `react` step are not in the form "
                "ReAct writes, so its tool list could not be rebuilt; they are kept as "
                "written and may name other tools than this ReAct's %s",
                self.signature.signature_string(),
                list(self.tools),
            )
        else:
            rebuilt = _instructions(task, self.signature, self.tools.values())
            if rebuilt != loaded:
                log.info(
                    "ReAct: loaded instructions now list the current tools %s", list(self.tools)
                )
                self.react.signature = self.react.signature.with_instructions(rebuilt)
        stale = sorted(
            {str(d.get("next_tool_name")) for d in self.react.demos} - set(self.tools) - {"None"}
        )
        if stale:
            log.warning(
                "ReAct: loaded demos of `react` call tools this ReAct does not have %s (its "
                "tools: %s); re-run the optimizer to replace them",
                stale,
                list(self.tools),
            )

    def render(self, turns: list[Mapping[str, Any]]) -> str:
        return render_trajectory(
            turns,
            max_trajectory_chars=self.max_trajectory_chars,
            max_observation_chars=self.max_observation_chars,
        )

    def forward(self, **inputs: Any) -> Prediction:
        turns: list[dict[str, Any]] = []
        for _ in range(self.max_iters):
            try:
                step = self.react(**inputs, trajectory=self.render(turns))
            except ParseError as exc:
                log.debug("ReAct: unusable reply, told the model: %s", exc)
                turns.append(self._observed({}, _explain(exc, list(self.tools))))
                continue
            name, args = step.next_tool_name, step.next_tool_args
            turn = {"thought": step.next_thought, "tool_name": name, "tool_args": args}
            turns.append(self._observed(turn, self.call_tool(name, args)))
            if name == FINISH:
                break
        out = self.extract(**inputs, trajectory=self.render(turns))
        return Prediction(trajectory=turns, **out.to_dict())

    def _observed(self, turn: dict[str, Any], observation: str) -> dict[str, Any]:
        """``turn`` with the observation as the model is shown it: cut to
        ``max_observation_chars``, and ``observation_cut`` saying how many characters were
        dropped (a 12 MB tool result must not become a 12 MB trace)."""
        limit = self.max_observation_chars
        turn["observation"] = observation[:limit]
        if len(observation) > limit:
            turn["observation_cut"] = len(observation) - limit
        return turn

    def call_tool(self, name: str, args: Mapping[str, Any]) -> str:
        """Runs one tool call; what it returns, or why it failed, as observation text."""
        tool = self.tools[name]  # the typed tool name already refused any other name
        try:
            kwargs = tool.validate(args)
        except ValueError as exc:
            schema = json.dumps(tool.args_schema(), ensure_ascii=False)
            return f"Error: bad arguments for {name}: {exc}. Its arguments are {schema}."
        try:
            result = tool(**kwargs)
        except Exception as exc:  # a tool's failure is the model's to handle
            return f"Error: {name} raised {type(exc).__name__}: {exc}"
        if isinstance(result, str):
            return result
        return json.dumps(to_jsonable(result), ensure_ascii=False)

    def __repr__(self) -> str:
        return (
            f"ReAct({self.signature.signature_string()!r}, tools={list(self.tools)}, "
            f"max_iters={self.max_iters})"
        )
