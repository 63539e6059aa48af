"""GEPA: reflective evolution of the predictors' instructions (Agrawal et al., 2025).

The search itself (Pareto front of candidates per validation example, minibatch acceptance,
the metric-call budget) is the ``gepa`` package's engine; apprentice supplies its adapter:
running a program with a candidate's instructions, the per-step traces and the metric's
feedback, and the proposal of a new instruction by a *reflection LM* asked through an
ordinary predictor (``ProposeInstruction``), so any LM the program can call proposes:
a hosted teacher, a local model, or a ScriptedLM in tests.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from apprentice.example import Example
from apprentice.metric import as_score, bind_metric, check_metric
from apprentice.module import Module
from apprentice.optimize.labeled import Optimizer, _check_trainset
from apprentice.signature import InputField, OutputField, Signature
from apprentice.traces.capture import Trace, run_traced

__all__ = ["GEPA", "GEPACandidate", "ProposeInstruction"]

log = logging.getLogger(__name__)


class ProposeInstruction(Signature):
    """You improve the instruction of one step of a language-model program. Read the
    current instruction and the examples: what the step was given, what it wrote, and
    feedback on the whole program's answer. Write a new instruction for the step that
    fixes the failures and keeps what already works. Give the instruction only."""

    current_instruction: str = InputField()
    examples: str = InputField(desc="the step's inputs, its outputs and feedback")
    new_instruction: str = OutputField()


@dataclass(frozen=True)
class GEPACandidate:
    """One program GEPA kept: its instructions per predictor and its validation score."""

    index: int
    instructions: dict[str, str]
    score: float


class GEPA(Optimizer):
    """Evolves each predictor's instruction by reflection; returns the program whose
    instructions score best on ``valset`` (the student's own instructions are candidate 0,
    so the result never scores below them there).

    ``metric(example, prediction[, trace])`` returns a number or bool, or an object with
    ``score`` and ``feedback`` attributes (e.g. ``ap.Prediction(score=0.0, feedback="...")``):
    the feedback text is what the reflection LM reads about each run. Without it, the
    feedback is the score and the example's expected fields.

    Budget: ``max_metric_calls`` (program runs scored, the unit of the ``gepa`` package), or
    ``max_full_evals`` passes over trainset + valset. Each kept candidate is in
    ``self.candidates`` and on the returned program as ``candidate_scores``.
    """

    def __init__(
        self,
        metric: Callable[..., Any],
        *,
        reflection_lm: Any,
        max_metric_calls: int | None = None,
        max_full_evals: int | None = None,
        reflection_minibatch_size: int = 3,
        candidate_selection_strategy: str = "pareto",
        skip_perfect_score: bool = True,
        perfect_score: float = 1.0,
        examples_per_proposal: int = 6,
        num_threads: int = 8,
        seed: int = 0,
    ) -> None:
        check_metric(metric)
        if (max_metric_calls is None) == (max_full_evals is None):
            raise ValueError(
                "give GEPA exactly one budget: max_metric_calls (program runs scored) or "
                f"max_full_evals (passes over trainset + valset); got max_metric_calls="
                f"{max_metric_calls!r}, max_full_evals={max_full_evals!r}"
            )
        for name, value in (
            ("max_metric_calls", max_metric_calls),
            ("max_full_evals", max_full_evals),
            ("reflection_minibatch_size", reflection_minibatch_size),
            ("examples_per_proposal", examples_per_proposal),
            ("num_threads", num_threads),
        ):
            if value is not None and (type(value) is not int or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if reflection_lm is None:
            raise ValueError(
                "GEPA needs a reflection_lm to propose instructions: any LM, e.g. the teacher"
            )
        self.metric = metric
        self.reflection_lm = reflection_lm
        self.max_metric_calls = max_metric_calls
        self.max_full_evals = max_full_evals
        self.reflection_minibatch_size = reflection_minibatch_size
        self.candidate_selection_strategy = candidate_selection_strategy
        self.skip_perfect_score = skip_perfect_score
        self.perfect_score = perfect_score
        self.examples_per_proposal = examples_per_proposal
        self.num_threads = num_threads
        self.seed = seed
        self.candidates: list[GEPACandidate] = []
        self.total_metric_calls = 0

    def compile(self, student, *, trainset, teacher=None, valset=None) -> Module:
        """``teacher`` is not used: GEPA tunes the student program's own instructions."""
        import gepa

        trainset = _check_trainset(trainset)
        valset = _check_trainset(valset if valset is not None else trainset, "valset")
        budget = self.max_metric_calls or self.max_full_evals * (len(trainset) + len(valset))
        adapter = _ProgramAdapter(self, student)
        seed_candidate = {path: p.signature.instructions for path, p in student.named_predictors()}
        if not seed_candidate:
            raise ValueError(f"program {type(student).__name__} has no predictors to tune")
        result = gepa.optimize(
            seed_candidate=seed_candidate,
            trainset=list(trainset),
            valset=list(valset),
            adapter=adapter,
            candidate_selection_strategy=self.candidate_selection_strategy,
            skip_perfect_score=self.skip_perfect_score,
            perfect_score=self.perfect_score,
            reflection_minibatch_size=self.reflection_minibatch_size,
            max_metric_calls=budget,
            logger=_Log(),
            seed=self.seed,
            # A failing proposal or run is logged and the search goes on (one bad
            # example never stops a run); the seed candidate is always kept.
            raise_on_exception=False,
        )
        self.candidates = [
            GEPACandidate(i, dict(c), float(s))
            for i, (c, s) in enumerate(
                zip(result.candidates, result.val_aggregate_scores, strict=True)
            )
        ]
        self.total_metric_calls = int(result.total_metric_calls or 0)
        best = max(self.candidates, key=lambda c: (c.score, -c.index))
        log.info(
            "GEPA: %d candidates, best %d at %.4f (start %.4f), %d metric calls",
            len(self.candidates),
            best.index,
            best.score,
            self.candidates[0].score,
            self.total_metric_calls,
        )
        program = with_instructions(student, best.instructions)
        program.candidate_scores = list(self.candidates)
        return program


def with_instructions(program: Module, instructions: Mapping[str, str]) -> Module:
    """A copy of ``program`` whose predictors carry ``instructions`` (path -> text)."""
    copy = program.deepcopy()
    for path, predictor in copy.named_predictors():
        if path in instructions:
            predictor.signature = predictor.signature.with_instructions(instructions[path])
    return copy


@dataclass
class _Run:
    trace: Trace
    score: float
    feedback: str


class _ProgramAdapter:
    """The ``gepa`` package's adapter protocol for an apprentice program."""

    def __init__(self, owner: GEPA, program: Module) -> None:
        from apprentice.predict.predict import Predict

        self.owner = owner
        self.program = program
        self.metric = bind_metric(owner.metric)
        self.proposer = Predict(ProposeInstruction, lm=owner.reflection_lm)

    # -- gepa.GEPAAdapter ------------------------------------------------------------
    def evaluate(self, batch: list[Example], candidate: dict[str, str], capture_traces=False):
        from gepa import EvaluationBatch

        program = with_instructions(self.program, candidate)
        with ThreadPoolExecutor(max_workers=min(self.owner.num_threads, len(batch))) as pool:
            runs = list(pool.map(lambda ex: self._run(program, ex), batch))
        return EvaluationBatch(
            outputs=[r.trace.prediction for r in runs],
            scores=[r.score for r in runs],
            trajectories=runs if capture_traces else None,
        )

    def make_reflective_dataset(
        self, candidate: dict[str, str], eval_batch: Any, components_to_update: list[str]
    ) -> dict[str, list[dict[str, Any]]]:
        records: dict[str, list[dict[str, Any]]] = {c: [] for c in components_to_update}
        for run in eval_batch.trajectories or []:
            for step in run.trace.steps:
                if step.predictor not in records or step.rejected:
                    continue
                records[step.predictor].append(
                    {
                        "Inputs": step.inputs,
                        "Generated Outputs": (step.outputs[0] if step.outputs else None)
                        or f"(the step failed: {step.error})",
                        "Feedback": run.feedback,
                        "Score": run.score,
                    }
                )
        return records

    def propose_new_texts(
        self,
        candidate: dict[str, str],
        reflective_dataset: Mapping[str, Sequence[Mapping[str, Any]]],
        components_to_update: list[str],
    ) -> dict[str, str]:
        proposals = {}
        for component in components_to_update:
            # The worst runs first: a proposal is cut to examples_per_proposal records.
            records = sorted(reflective_dataset.get(component, []), key=lambda r: r["Score"])
            records = records[: self.owner.examples_per_proposal]
            if not records:
                continue
            reply = self.proposer(
                current_instruction=candidate[component], examples=_examples_text(records)
            )
            text = str(reply.new_instruction).strip()
            if text:
                proposals[component] = text
        return proposals

    # -- one program run -------------------------------------------------------------
    def _run(self, program: Module, example: Example) -> _Run:
        feedback: list[str] = []

        def scored(ex, prediction, trace):
            raw = self.metric(ex, prediction, trace)
            score = getattr(raw, "score", raw)
            text = getattr(raw, "feedback", None)
            if text:
                feedback.append(str(text))
            return score

        trace = run_traced(program, example, metric=scored)
        if trace.error is not None or trace.score is None:
            return _Run(trace, 0.0, f"The program failed: {trace.error}")
        score = as_score(trace.score, trace.example_id)
        if feedback:
            return _Run(trace, score, feedback[0])
        expected = {
            k: v for k, v in example.to_dict().items() if k not in example.inputs().to_dict()
        }
        text = f"Score {score:g} (1 is right)."
        if expected:
            text += f" The expected answer: {json.dumps(expected, default=str)}"
        return _Run(trace, score, text)


def _examples_text(records: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    for i, record in enumerate(records, 1):
        lines = [f"Example {i}"]
        for key in ("Inputs", "Generated Outputs"):
            lines.append(f"{key}: {json.dumps(record[key], ensure_ascii=False, default=str)}")
        lines.append(f"Feedback: {record['Feedback']}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


class _Log:
    """The ``gepa`` engine's progress lines, into apprentice's log instead of stdout."""

    def log(self, message: str) -> None:
        log.info("GEPA: %s", message)
