"""The NER recipe: typed entity outputs parse and validate, the metric is entity F1, and a
tiny student distilled from the scripted teacher finds the entities on held-out sentences."""

from __future__ import annotations

import pytest
from recipes.ner.task import NER, Entity, make_examples, metric, teacher

import apprentice as ap
from apprentice.train.tiny import make_tiny_student, task_corpus


def _run(program_lm, sentence):
    program = NER()
    program.set_lm(program_lm)
    return program(sentence=sentence)


def test_the_teacher_scores_perfectly_and_outputs_are_entities():
    program = NER()
    program.set_lm(ap.ScriptedLM(teacher))
    devset = make_examples(40, seed=3, split="dev")
    assert ap.Evaluate(devset=devset, metric=metric, display_progress=False)(program).score == 1.0
    pred = program(sentence="Kenji Sato joined Calder Bank in Osaka last spring.")
    assert pred.entities == [
        Entity(text="Kenji Sato", type="person"),
        Entity(text="Calder Bank", type="organization"),
        Entity(text="Osaka", type="location"),
    ]


def test_a_label_outside_the_type_is_a_parse_error_naming_it():
    def sloppy(signature, inputs):
        return '[[entities]]\n[{"text": "Osaka", "type": "city"}]'

    with pytest.raises(ap.ParseError, match="entities.*city"):
        _run(ap.ScriptedLM(sloppy), "Osaka.")


def test_metric_is_entity_level_f1():
    gold = ap.Example(entities=[{"text": "A", "type": "person"}, {"text": "B", "type": "location"}])
    both = ap.Prediction(
        entities=[Entity(text="A", type="person"), Entity(text="B", type="location")]
    )
    assert metric(gold, both) == 1.0
    # one right, one with the wrong type: precision 1/2, recall 1/2
    half = ap.Prediction(
        entities=[Entity(text="A", type="person"), Entity(text="B", type="organization")]
    )
    assert metric(gold, half) == pytest.approx(0.5)
    assert metric(gold, ap.Prediction(entities=[])) == 0.0
    assert metric(ap.Example(entities=[]), ap.Prediction(entities=[])) == 1.0


@pytest.mark.slow
@pytest.mark.timeout(3600)  # training time grows with the box's load, not a hang
def test_a_tiny_student_learns_typed_entities(tmp_path):
    lm = ap.ScriptedLM(teacher)
    trainset = make_examples(300)
    student = make_tiny_student(
        "causal", task_corpus(NER(), trainset, lm), tmp_path / "student", vocab_size=1000
    )
    optimizer = ap.BootstrapFinetune(
        metric=metric,
        threshold=1.0,
        student=student,
        run_dir=tmp_path / "run",
        progress=False,
        lm_options={"max_new_tokens": 96},
        train=ap.TrainConfig(full_finetune=True, epochs=30, learning_rate=2e-3, save_every=10**6),
    )
    compiled = optimizer.compile(NER(), trainset=trainset, teacher=lm)
    heldout = make_examples(50, seed=7, split="dev")
    result = ap.Evaluate(devset=heldout, metric=metric, num_threads=16, display_progress=False)(
        compiled
    )
    # Stated bar: mean entity F1 >= 0.7 on held-out sentences, against 0.0 untrained (the
    # recipe with these settings measured 0.844 on 100 dev sentences; the tiny student
    # memorises its training sentences: train loss 0.10, validation loss 0.43).
    assert result.score >= 0.7, result.score
    assert all(isinstance(e, Entity) for e in compiled(sentence=heldout[0].sentence).entities)
