"""BootstrapFinetune distils the ReAct shop agent into a tiny student that then makes the
tool calls itself on held-out questions. Slow: the same training as
recipes/react_agent/causal.yaml (~500 rows, 25 epochs), a few minutes on 2 quiet cores and
far more on a shared box, hence the long timeout."""

from __future__ import annotations

import pytest
from recipes.react_agent.task import (
    ShopAgent,
    calls,
    expected_calls,
    make_examples,
    metric,
    teacher,
)

import apprentice as ap
from apprentice.lm.local import LocalLM
from apprentice.train.tiny import make_tiny_student, task_corpus

HELDOUT = make_examples(20, seed=7)


def _tool_use(program, examples=HELDOUT) -> dict[str, float]:
    """Over the held-out questions: the share whose tool sequence is right (price, price,
    calculate, finish), whose two lookups are exactly right (tool and arguments), whose
    calculator expression is right, and whose answer is right."""
    shares = {"sequence": 0.0, "lookups": 0.0, "expression": 0.0, "answer": 0.0}
    for example in examples:
        try:
            pred = program(question=example.question)
        except ap.ParseError:
            continue
        got, want = calls(pred), expected_calls(example)
        shares["sequence"] += [c[0] for c in got] == [c[0] for c in want]
        shares["lookups"] += got[:2] == want[:2]
        shares["expression"] += len(got) > 2 and got[2] == want[2]
        shares["answer"] += metric(example, pred)
    return {k: v / len(examples) for k, v in shares.items()}


@pytest.mark.slow
@pytest.mark.timeout(3600)  # training time grows with the box's load, not a hang
def test_a_tiny_student_learns_to_call_the_tools(tmp_path):
    lm = ap.ScriptedLM(teacher)
    trainset = make_examples(100)
    student = make_tiny_student(
        "causal", task_corpus(ShopAgent(), trainset, lm), tmp_path / "student", vocab_size=1000
    )
    optimizer = ap.BootstrapFinetune(
        metric=metric,
        threshold=1.0,
        student=student,
        run_dir=tmp_path / "run",
        progress=False,
        lm_options={"max_new_tokens": 48},
        train=ap.TrainConfig(full_finetune=True, epochs=25, learning_rate=3e-3, save_every=10**6),
    )
    compiled = optimizer.compile(ShopAgent(), trainset=trainset, teacher=lm)
    # One row per agent turn (4 per question: two lookups, the sum, finish) plus the
    # extract step's row, counted over both splits.
    counts = optimizer.results["dataset"]["counts"]
    rows = {p: counts["train"].get(p, 0) + counts["validation"].get(p, 0) for p in counts["train"]}
    assert rows == {"agent.react": 4 * 100, "agent.extract": 100}

    trained = _tool_use(compiled)
    untrained = ShopAgent()
    untrained.set_lm(LocalLM(student, max_new_tokens=48))
    before = _tool_use(untrained, HELDOUT[:5])  # 6 turns of noise each: slow

    # Stated bars: the trained student runs the loop itself on held-out questions: the
    # right tools in the right order on >= 90% and both lookups exactly right on >= 50%,
    # where the untrained one makes no usable call at all. Measured on 20 held-out
    # questions with three students trained this way: sequence 1.00 in all three, lookups
    # 0.90, 0.90 and 0.70, but the calculator expression only 0.00-0.25 and the answer
    # 0.00-0.10: a ~1M-parameter student copies words from the question but not numbers
    # from the observations.
    assert before == {"sequence": 0.0, "lookups": 0.0, "expression": 0.0, "answer": 0.0}
    assert trained["sequence"] >= 0.9, trained
    assert trained["lookups"] >= 0.5, trained
