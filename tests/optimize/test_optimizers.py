from recipes.demo.task import TicketTriage, make_examples, metric, teacher

import apprentice as ap


def test_labeled_few_shot_samples_k_demos_per_predictor_without_mutating():
    student = TicketTriage()
    trainset = make_examples(20)
    compiled = ap.LabeledFewShot(k=5).compile(student, trainset=trainset)
    assert compiled is not student
    assert [len(p.demos) for p in compiled.predictors()] == [5, 5]
    assert all(p.demos == [] for p in student.predictors())
    assert all(d in trainset for d in compiled.classify.demos)


def test_bootstrap_few_shot_turns_passing_teacher_steps_into_demos():
    student = TicketTriage()
    lm = ap.ScriptedLM(teacher)
    optimizer = ap.BootstrapFewShot(
        metric, metric_threshold=1.0, max_bootstrapped_demos=3, max_labeled_demos=5
    )
    compiled = optimizer.compile(student, trainset=make_examples(10), teacher=lm)
    classify, extract = compiled.classify.demos, compiled.extract.demos
    assert len(classify) == 5 and len(extract) == 5  # 3 bootstrapped + 2 labeled
    # Bootstrapped demos carry the teacher's intermediate outputs (reasoning, category).
    assert all("reasoning" in d for d in classify[:3])
    assert all(set(d.keys()) == {"ticket", "category", "order_id"} for d in extract[:3])
    assert optimizer.stats["bootstrapped"] == 3
    # Every run passed, so it stopped after 3 of the 10 examples (before: "tried" said 10).
    assert optimizer.stats["tried"] == 3 and len(lm.history) == 3 * 2
    compiled.set_lm(lm)
    assert compiled(ticket=make_examples(1, seed=9)[0].ticket).order_id.startswith("A")


def test_bootstrap_few_shot_skips_failing_runs_and_uses_later_rounds():
    attempts = []

    def shaky(sig, inputs):
        attempts.append(1)
        if len(attempts) <= 4:  # the first two examples' classify calls fail
            return "garbage"
        return teacher(sig, inputs)

    optimizer = ap.BootstrapFewShot(
        metric, max_bootstrapped_demos=2, max_labeled_demos=0, max_rounds=2
    )
    compiled = optimizer.compile(
        TicketTriage(), trainset=make_examples(4), teacher=ap.ScriptedLM(shaky)
    )
    assert len(compiled.classify.demos) == 2
    assert optimizer.stats["errors"] >= 2


class NeedsDemos(ap.ScriptedLM):
    """Answers well only when the prompt carries at least ``k`` demos (a user/assistant pair each)."""

    def __init__(self, k):
        super().__init__(teacher)
        self.k = k

    def _answer(self, request):
        demos = (len(request.messages) - 2) // 2
        response = super()._answer(request)
        if demos < self.k and "[[category]]" in response.text:
            return ap.Response(texts=["[[reasoning]]\nno idea\n\n[[category]]\nbug"])
        return response


def test_random_search_scores_every_candidate_and_keeps_the_best():
    student = TicketTriage()
    student.set_lm(NeedsDemos(k=4))
    optimizer = ap.BootstrapFewShotWithRandomSearch(
        metric,
        num_candidate_programs=3,
        max_bootstrapped_demos=2,
        max_labeled_demos=4,
        num_threads=4,
    )
    compiled = optimizer.compile(
        student,
        trainset=make_examples(8),
        valset=make_examples(30, seed=5),
        teacher=ap.ScriptedLM(teacher),
    )
    scores = optimizer.candidate_scores
    assert [c.kind for c in scores] == [
        "zero-shot",
        "labeled",
        "bootstrapped",
        "bootstrapped",
        "bootstrapped",
    ]
    zero_shot = scores[0].score
    assert zero_shot < 1.0  # without demos the student mislabels non-bug tickets
    assert max(c.score for c in scores) == 1.0
    assert compiled.candidate_scores == scores
    assert len(compiled.classify.demos) >= 4  # the winner is a candidate with enough demos
    result = ap.Evaluate(devset=make_examples(30, seed=5), metric=metric, display_progress=False)(
        compiled
    )
    assert result.score == 1.0


def test_bootstrap_finetune_stops_at_its_cost_cap_before_any_training(tmp_path, monkeypatch):
    import pytest

    from apprentice.pipeline import StageError

    monkeypatch.setenv("APPRENTICE_CACHE_DIR", str(tmp_path / "cache"))  # every call is paid
    priced = ap.ScriptedLM(teacher, price=ap.Price(input=1e6, output=1e6))  # $1 a word
    optimizer = ap.BootstrapFinetune(
        metric=metric,
        student=tmp_path / "never-loaded",  # the run stops before training needs it
        run_dir=tmp_path / "run",
        progress=False,
        concurrency=1,
        max_cost_usd=250,
    )
    with pytest.raises(StageError, match="stopped at the teacher cost cap"):
        optimizer.compile(TicketTriage(), trainset=make_examples(10), teacher=priced)
    traced = len(list(ap.TraceStore(tmp_path / "run" / "traces")))
    assert 1 <= traced < 10
    assert not (tmp_path / "run" / "dataset").exists()
