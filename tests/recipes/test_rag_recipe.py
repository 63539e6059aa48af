"""recipes/rag: BM25 retrieval over a generated corpus, a scripted teacher, and a tiny
student distilled with BootstrapFinetune that answers held-out questions from the passages
it retrieves (slow)."""

from __future__ import annotations

import re

import pytest
from recipes.rag.task import (
    RAG,
    corpus_retriever,
    make_corpus,
    make_examples,
    make_world,
    metric,
    teacher,
)

import apprentice as ap
from apprentice.lm.local import LocalLM
from apprentice.train.tiny import make_tiny_student, task_corpus

HELDOUT = make_examples(60, towns=(300, 400), seed=7)


def _towns(examples):
    return {re.search(r"(?:through|founded|is) (\w+)", e.question).group(1) for e in examples}


def test_held_out_questions_ask_about_towns_no_training_question_asks_about():
    train = make_examples(600, towns=(0, 300), seed=0)
    assert len({e.question for e in train}) == 600
    assert not _towns(train) & _towns(HELDOUT)
    assert len(make_corpus()) == 1200


def test_bm25_finds_the_answer_and_the_teacher_reads_it():
    retriever = corpus_retriever()
    found = sum(
        any(e.answer in p.split() or e.answer + "." in p.split() for p in retriever(e.question, 3))
        for e in HELDOUT
    )
    assert found == len(HELDOUT)
    program = RAG(k=3)
    program.set_lm(ap.ScriptedLM(teacher))
    result = ap.Evaluate(devset=HELDOUT, metric=metric, display_progress=False)(program)
    assert result.score == 1.0
    # Without the passages the teacher cannot answer: the answers live in the corpus only.
    program = RAG(k=3, rm=lambda query, k: [])
    program.set_lm(ap.ScriptedLM(teacher))
    assert program(question=HELDOUT[0].question).answer == "unknown"


def _other(word: str) -> str:
    """Another answer of the same kind (the next river, founder or goods in sorted order)."""
    for kind in ("river", "founder", "goods"):
        values = sorted({t[kind] for t in make_world()})
        if word in values:
            return values[(values.index(word) + 1) % len(values)]
    raise KeyError(word)


def _swap_answers(question: str, k: int) -> list[str]:
    """The true passages with each answer replaced by another of its kind: a student that
    reads its passages answers with the replacement."""
    passages = corpus_retriever()(question, k)
    return [
        re.sub(r"(by|river|its) (\w+)", lambda m: f"{m[1]} {_other(m[2])}", p) for p in passages
    ]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 9 min measured on a busy 2-core box
def test_a_distilled_student_answers_held_out_questions_from_the_passages(tmp_path):
    lm = ap.ScriptedLM(teacher)
    trainset = make_examples(600, towns=(0, 300), seed=0)
    student = make_tiny_student(
        "causal", task_corpus(RAG(), trainset[:200], lm), tmp_path / "student", vocab_size=1000
    )
    untrained = RAG()
    untrained.set_lm(LocalLM(student, max_new_tokens=16))

    def evaluate(program, devset=HELDOUT):
        return ap.Evaluate(devset=devset, metric=metric, num_threads=16, display_progress=False)(
            program
        ).score

    before = evaluate(untrained, HELDOUT[:20])  # it babbles 16 tokens a call: keep it short

    optimizer = ap.BootstrapFinetune(
        metric=metric,
        threshold=1.0,
        student=student,
        run_dir=tmp_path / "run",
        progress=False,
        train=ap.TrainConfig(full_finetune=True, epochs=20, learning_rate=2e-3, save_every=10**6),
    )
    compiled = optimizer.compile(RAG(), trainset=trainset, teacher=lm)
    after = evaluate(compiled)
    assert before <= 0.05 and after >= 0.8, (before, after)

    # It reads the passages: given altered ones, it answers with the altered words.
    compiled.retrieve.rm = _swap_answers
    altered = [compiled(question=e.question).answer for e in HELDOUT[:20]]
    followed = sum(a == _other(e.answer) for a, e in zip(altered, HELDOUT, strict=False))
    assert followed >= 12, altered
