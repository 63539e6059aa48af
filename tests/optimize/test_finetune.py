"""End to end: a scripted teacher distilled into tiny students built from config (slow).

There is no pretrained model offline, so the causal student is first trained fully on the
ticket task; LoRA is then proven the way it is used on real students: adapters trained on
that (now meaningful) base learn related tasks, and two of them serve from one base.
"""

from __future__ import annotations

import re

import pytest
from recipes.demo.task import TicketTriage, make_examples, metric, teacher

import apprentice as ap
from apprentice.lm.local import LocalLM
from apprentice.traces import TraceStoreMismatch
from apprentice.train.export import read_manifest
from apprentice.train.tiny import make_tiny_student, task_corpus

HELDOUT = make_examples(100, seed=7)


@pytest.fixture(scope="module")
def full_student(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("finetune")
    lm = ap.ScriptedLM(teacher)
    trainset = make_examples(300)
    student = make_tiny_student(
        "causal",
        task_corpus(TicketTriage(), trainset, lm),
        tmp_path / "student",
        vocab_size=1000,
        # 8 heads of 16 dimensions, not 4 of 32: copying the order id needs an induction
        # head, and with 4 heads whether one formed depended on the init and on the CPU's
        # kernels (0.995 on an AVX512 box, 0.830 on an AVX2 one, same seed; one init sat at
        # val loss 0.82 for 1500 steps). With 8 heads every init tried learnt it by step
        # 455 of 2450 and scored 0.995, on AVX2 and with vector kernels off, 1 and 2
        # threads (docs/reliability.md, "fresh clone").
        num_heads=8,
    )
    optimizer = ap.BootstrapFinetune(
        metric=metric,
        threshold=1.0,
        student=student,
        run_dir=tmp_path / "run",
        progress=False,
        train=ap.TrainConfig(full_finetune=True, epochs=70, learning_rate=2e-3, save_every=10**6),
    )
    compiled = optimizer.compile(TicketTriage(), trainset=trainset, teacher=lm)
    return tmp_path, optimizer, compiled


@pytest.mark.slow
def test_causal_student_learns_the_two_step_task(full_student):
    tmp_path, optimizer, compiled = full_student
    assert optimizer.results["bootstrap"]["kept"] == 300
    assert all(isinstance(p.lm, LocalLM) for p in compiled.predictors())
    result = ap.Evaluate(devset=HELDOUT, metric=metric, num_threads=16, display_progress=False)(
        compiled
    )
    # Stated bar: the student keeps >= 95% of the teacher's (perfect) score on held-out
    # tickets (measured: 0.995 to 1.00).
    assert result.score >= 0.95, result.score

    # The binding survives save/load: a fresh program runs the same student.
    path = compiled.save(tmp_path / "program.json")
    restored = TicketTriage().load(path)
    assert restored.classify.lm.identity == compiled.classify.lm.identity
    again = ap.Evaluate(devset=HELDOUT[:20], metric=metric, display_progress=False)(restored)
    assert again.score >= 0.95


def _queue_teacher(signature, inputs):
    answer = teacher(signature, inputs)
    if "order_id" in answer:
        answer["order_id"] = answer["order_id"] + "-" + inputs["category"]
    return answer


def _region_teacher(signature, inputs):
    answer = teacher(signature, inputs)
    if "order_id" in answer:
        answer["order_id"] = answer["order_id"] + "-EU"
    return answer


def _id_metric(transform):
    def score(example, prediction, trace=None):
        return float(prediction.order_id == transform(example))

    return score


# Two related tasks that keep the base's way of copying the order id and add to it: a fixed
# suffix, and a suffix copied from another input. (A task that drops the id's leading "A"
# was tried and is not stable on this tiny base: 0.16-0.99 depending on the base's seed and
# the prompt text, because the base copies the digits by finding the "A" it just wrote.)
# Measured 0.99 for both, at r=16, on bases trained with seeds 0, 1 and 2.
TASKS = {
    "queue": (_queue_teacher, _id_metric(lambda e: f"{e.order_id}-{e.category}")),
    "region": (_region_teacher, _id_metric(lambda e: e.order_id + "-EU")),
}


@pytest.mark.slow
def test_lora_adapters_learn_related_tasks_on_the_trained_base(full_student):
    tmp_path, _, compiled = full_student
    base = compiled.extract.lm.model  # the fully trained student's directory
    programs = {}
    for name, (task_teacher, task_metric) in TASKS.items():
        optimizer = ap.BootstrapFinetune(
            metric=task_metric,
            threshold=1.0,
            student=base,
            run_dir=tmp_path / f"lora-{name}",
            progress=False,
            lora=ap.LoraConfig(r=16, alpha=32, dropout=0.0),
            train=ap.TrainConfig(epochs=8, learning_rate=2e-3, save_every=10**6),
        )
        programs[name] = optimizer.compile(
            TicketTriage(), trainset=make_examples(200, seed=3), teacher=ap.ScriptedLM(task_teacher)
        )
        adapter_dir = tmp_path / f"lora-{name}" / "adapters" / "multitask" / "adapter"
        manifest = read_manifest(adapter_dir)
        # A real LoRA adapter: no trainable embeddings or head, servable by vLLM.
        assert manifest.method == "lora" and manifest.servable == {"vllm": True, "reasons": []}
        assert (adapter_dir / "adapter_config.json").exists()
        assert not (adapter_dir / "model.safetensors").exists()

    queue, region = programs["queue"], programs["region"]
    # Two adapters on one base: one engine holds both.
    assert queue.extract.lm.engine is region.extract.lm.engine
    names = {queue.extract.lm.adapter, region.extract.lm.adapter}
    assert len(names) == 2 and names <= set(queue.extract.lm.adapter_names())
    for name, program in programs.items():
        score = ap.Evaluate(
            devset=HELDOUT[:50], metric=TASKS[name][1], num_threads=16, display_progress=False
        )(program)
        assert score.score >= 0.9, (name, score.score)

    # The base alone still does the original task: the adapters did not touch it.
    base_lm = LocalLM(base)
    plain = TicketTriage()
    plain.set_lm(base_lm)
    pred = plain(ticket=HELDOUT[0].ticket)
    assert re.fullmatch(r"A\d{5}", pred.order_id)


class TriageOnly(ap.Module):
    """The demo's first step alone: the queue of a ticket."""

    def __init__(self) -> None:
        self.classify = TicketTriage().classify

    def forward(self, ticket: str) -> ap.Prediction:
        return ap.Prediction(category=self.classify(ticket=ticket).category)


def _category_metric(example, prediction, trace=None):
    return float(prediction.category == example.category)


@pytest.mark.slow
def test_t5_student_learns_to_classify_tickets(tmp_path):
    lm = ap.ScriptedLM(teacher)
    trainset = make_examples(300)
    corpus = task_corpus(TriageOnly(), trainset, lm, format=ap.T5Format())
    student = make_tiny_student("seq2seq", corpus, tmp_path / "student", vocab_size=1000)
    optimizer = ap.BootstrapFinetune(
        metric=_category_metric,
        threshold=1.0,
        student=student,
        run_dir=tmp_path / "run",
        progress=False,
        train=ap.TrainConfig(full_finetune=True, epochs=15, learning_rate=1e-3, save_every=10**6),
    )
    compiled = optimizer.compile(TriageOnly(), trainset=trainset, teacher=lm)
    assert compiled.classify.lm.kind == "seq2seq"
    assert isinstance(compiled.classify.format, ap.T5Format)  # chosen for a seq2seq student
    result = ap.Evaluate(
        devset=HELDOUT, metric=_category_metric, num_threads=16, display_progress=False
    )(compiled)
    # Stated bar: >= 0.9 on held-out tickets. Copying order ids takes the demo recipe's
    # 6000 tickets and 8 heads (~25 min of training, docs/benchmarks.md): more than CI
    # holds, so this test's quality check is the classification step.
    assert result.score >= 0.9, result.score


# -- re-running in the same run_dir (fast: training is stubbed out) ----------------------------
class _Trained(Exception):
    """Raised instead of training: the test only needs what reached the trainer."""


@pytest.fixture
def no_training(monkeypatch):
    import apprentice.train.sft as sft

    def stop(dataset_dir, *args, **kwargs):
        raise _Trained(dataset_dir)

    monkeypatch.setattr(sft, "train_adapter", stop)


def _finetune(run_dir, metric_fn, **options):
    return ap.BootstrapFinetune(
        metric=metric_fn,
        threshold=1.0,
        student="unused",  # never loaded: training is stubbed out
        run_dir=run_dir,
        progress=False,
        concurrency=2,
        format="chat",  # "auto" would read the student's config to pick its format
        **options,
    )


def test_fixing_the_metric_and_rerunning_in_the_same_run_dir(tmp_path, no_training):
    def broken(example, prediction):
        return prediction.category == example.order_id  # compares the wrong fields

    trainset = make_examples(4)
    first = _finetune(tmp_path, broken)
    with pytest.raises(ValueError, match="no training rows"):
        first.compile(TicketTriage(), trainset=trainset, teacher=ap.ScriptedLM(teacher))
    # Before: the 4 old traces were reused (skipped 4, ran 0) and the same error blamed
    # the metric that had just been fixed. Now the change is named, with the way out.
    fixed = _finetune(tmp_path, metric)
    with pytest.raises(TraceStoreMismatch, match="different metric") as refused:
        fixed.compile(TicketTriage(), trainset=trainset, teacher=ap.ScriptedLM(teacher))
    assert "reset_traces=True" in str(refused.value)
    again = _finetune(tmp_path, metric, reset_traces=True)
    with pytest.raises(_Trained):
        again.compile(TicketTriage(), trainset=trainset, teacher=ap.ScriptedLM(teacher))
    assert again.results["bootstrap"]["ran"] == 4 and again.results["bootstrap"]["kept"] == 4
    assert len(list(tmp_path.glob("traces/traces.*.jsonl"))) == 1  # the old ones, set aside


def test_retry_failed_reruns_failed_traces_of_an_earlier_run(tmp_path, no_training):
    outage = {"on": True}

    def flaky(sig, inputs):
        if outage["on"]:
            raise RuntimeError("endpoint down")
        return teacher(sig, inputs)

    trainset = make_examples(4)
    with pytest.raises(ValueError, match="no training rows"):
        _finetune(tmp_path, metric).compile(
            TicketTriage(), trainset=trainset, teacher=ap.ScriptedLM(flaky)
        )
    outage["on"] = False
    with pytest.raises(ValueError, match="4 of them were reused.*retry_failed=True"):
        _finetune(tmp_path, metric).compile(
            TicketTriage(), trainset=trainset, teacher=ap.ScriptedLM(flaky)
        )
    retried = _finetune(tmp_path, metric, retry_failed=True)
    with pytest.raises(_Trained):
        retried.compile(TicketTriage(), trainset=trainset, teacher=ap.ScriptedLM(flaky))
    assert retried.results["bootstrap"]["ran"] == 4 and retried.results["bootstrap"]["kept"] == 4


def test_a_second_process_on_the_run_dir_is_refused(tmp_path, no_training):
    from apprentice.files import DirectoryBusy, folder_lock

    other = folder_lock(tmp_path)
    other.acquire(timeout=0)
    try:
        with pytest.raises(DirectoryBusy, match="in use"):
            _finetune(tmp_path, metric).compile(
                TicketTriage(), trainset=make_examples(2), teacher=ap.ScriptedLM(teacher)
            )
    finally:
        other.release()
