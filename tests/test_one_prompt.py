"""One prompt, trained and served: for each student kind and format, the prompt of a
training row is token for token the prompt the compiled program sends the student for the
same step, and the compiled program keeps the format its adapter learned (also after
save and load)."""

import contextlib

import pytest
from recipes.demo.task import TicketTriage, make_examples, metric, teacher

import apprentice as ap
from apprentice.dataset import IGNORE_INDEX, load_dataset_dir, tokenize_rows
from apprentice.train.tiny import make_tiny_student, task_corpus

CASES = [  # (student kind, BootstrapFinetune's format, the format it must resolve to)
    ("causal", "auto", "chat"),
    ("causal", "json", "json"),
    ("seq2seq", "auto", "t5"),
    ("causal", "baked", "baked"),
]


@pytest.mark.parametrize(("kind", "asked", "resolved"), CASES)
def test_the_trained_prompt_is_the_served_prompt(tmp_path, kind, asked, resolved):
    trainset = make_examples(4)
    lm = ap.ScriptedLM(teacher)
    corpus = task_corpus(TicketTriage(), trainset, lm, format=ap.formats.format_named(resolved))
    student = make_tiny_student(
        kind, corpus, tmp_path / "student", hidden_size=32, num_layers=1, vocab_size=400
    )
    optimizer = ap.BootstrapFinetune(
        metric=metric,
        threshold=1.0,
        student=student,
        run_dir=tmp_path / "run",
        progress=False,
        format=asked,
        val_fraction=0.0,
        serve={"max_new_tokens": 2},  # the prompt is what is checked: replies kept short
        train=ap.TrainConfig(full_finetune=True, max_steps=1, batch_size=4),
    )
    compiled = optimizer.compile(TicketTriage(), trainset=trainset, teacher=lm)
    data, manifest = load_dataset_dir(tmp_path / "run" / "dataset")
    assert manifest.format == resolved

    loaded = TicketTriage().load(tmp_path / "run" / "program.json", trusted=True)
    for program in (compiled, loaded):
        for _, predictor in program.named_predictors():
            assert predictor.format.name == resolved
        engine = program.classify.lm.engine
        served: list = []
        # Call each bound predictor on each step of the teacher's traces, and catch the
        # prompts it sends (an untrained student's reply may not parse: the prompt counts).
        predictors = dict(program.named_predictors())
        with ap.context(observers=(served.append,)):
            for trace in ap.TraceStore(tmp_path / "run" / "traces"):
                for step in trace.steps:
                    predictor = predictors[step.predictor]
                    inputs = {n: step.inputs[n] for n in predictor.signature.input_fields}
                    with contextlib.suppress(ap.ParseError):
                        predictor(**inputs)
        assert len(served) == 2 * len(trainset)
        names = {id(p): path for path, p in program.named_predictors()}
        sent = {(names[id(r.predictor)], r.messages[-1]["content"]): r for r in served}
        features, _ = tokenize_rows(data["train"], engine.tokenizer, kind=kind, max_length=2048)
        assert len(features) == len(data["train"]) > 0
        for row, feature in zip(data["train"], features, strict=True):
            if kind == "causal":
                pairs = zip(feature["input_ids"], feature["labels"], strict=True)
                prompt = [token for token, label in pairs if label == IGNORE_INDEX]
            else:
                prompt = feature["input_ids"]
            record = sent[(row["predictor"], row["messages"][-1]["content"])]
            assert record.messages == row["messages"]  # byte for byte
            assert engine.encode(record.messages) == prompt  # token for token


def test_a_max_length_above_the_students_context_is_refused_before_the_teacher_runs(tmp_path):
    # T5's context is one number (512, from its tokenizer) in training and serving.
    student = make_tiny_student(
        "seq2seq", ["a ticket"] * 8, tmp_path / "t5", hidden_size=32, num_layers=1, vocab_size=300
    )
    calls = []

    def counting(signature, inputs):
        calls.append(inputs)
        return teacher(signature, inputs)

    optimizer = ap.BootstrapFinetune(
        metric=metric,
        student=student,
        run_dir=tmp_path / "run",
        progress=False,
        train=ap.TrainConfig(max_length=1024),
    )
    with pytest.raises(ValueError, match=r"max_length=1024 is above the context .* \(512 tokens"):
        optimizer.compile(
            TicketTriage(), trainset=make_examples(2), teacher=ap.ScriptedLM(counting)
        )
    assert calls == []  # nothing paid
