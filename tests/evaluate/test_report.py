"""Report: teacher vs students on the demo task, with step accuracy, latency, tokens, cost."""

from __future__ import annotations

import json

import pytest
from recipes.demo.task import CATEGORIES, TicketTriage, make_examples, metric, teacher

import apprentice as ap
from apprentice.evaluate.report import (
    PredictorStats,
    SystemEval,
    evaluate_system,
    headline,
    write_report,
)

PRICE = ap.Price(input=0.15, output=0.60)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _category_wrong(order_id: str) -> bool:
    return int(order_id[-1]) % 2 == 0


def _order_wrong(order_id: str) -> bool:
    return int(order_id[-2]) % 2 == 0


def half_wrong_student(signature, inputs):
    """The teacher's answer, corrupted by rule: the category when the order number's last
    digit is even, the order number when its second-to-last digit is even."""
    answer = teacher(signature, inputs)
    order_id = teacher(ap.make_signature("ticket -> order_id"), inputs)["order_id"]
    if "category" in answer and _category_wrong(order_id):
        answer["category"] = CATEGORIES[(CATEGORIES.index(answer["category"]) + 1) % 3]
    if "order_id" in answer and _order_wrong(order_id):
        answer["order_id"] = "A00000"
    return answer


@pytest.fixture(scope="module")
def devset():
    return make_examples(30, seed=7)


@pytest.fixture(scope="module")
def teacher_run(devset):
    lm = ap.ScriptedLM(teacher, model="teacher-model", price=PRICE)
    # The teacher is the configured default: its price is found through the settings.
    with ap.context(lm=lm):
        system = evaluate_system(
            "teacher", TicketTriage(), devset, metric, num_threads=4, display_progress=False
        )
    return lm, system


@pytest.fixture(scope="module")
def student_run(devset):
    lm = ap.ScriptedLM(half_wrong_student, model="student-model")
    program = TicketTriage()
    program.set_lm(lm)
    system = evaluate_system(
        "student (untrained)", program, devset, metric, num_threads=4, display_progress=False
    )
    return lm, system


def test_teacher_scores_every_step_and_costs_its_usage_at_its_price(teacher_run, devset):
    lm, system = teacher_run
    assert (system.name, system.score, system.n, system.errors) == ("teacher", 1.0, 30, 0)
    assert system.step_accuracy == {"classify": 1.0, "extract": 1.0}
    assert system.predictors == {
        "classify": PredictorStats(calls=30, labelled=30, correct=30),
        "extract": PredictorStats(calls=30, labelled=30, correct=30),
    }
    usage = lm.usage
    assert system.lm_calls == usage.calls == 60
    assert (system.prompt_tokens, system.completion_tokens) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    assert system.prompt_tokens_per_call == pytest.approx(usage.prompt_tokens / 60)
    assert system.prompt_tokens_per_call > system.completion_tokens_per_call > 0
    expected_cost = (usage.prompt_tokens * 0.15 + usage.completion_tokens * 0.60) / 1e6
    assert system.cost_usd == pytest.approx(usage.cost) == pytest.approx(expected_cost)
    assert system.cost_usd > 0 and system.priced
    assert system.cost_per_1k == pytest.approx(expected_cost / 30 * 1000)
    assert 0 < system.latency_p50_s <= system.latency_p95_s
    assert system.models == ["scripted:teacher-model"]
    assert [r.score for r in system.result.results] == [1.0] * 30


def test_student_step_accuracy_follows_its_script_exactly(student_run, devset):
    lm, system = student_run
    category_ok = [not _category_wrong(e.order_id) for e in devset]
    order_ok = [not _order_wrong(e.order_id) for e in devset]
    assert 0 < sum(category_ok) < 30 and 0 < sum(order_ok) < 30  # the data exercises both
    assert system.predictors == {
        "classify": PredictorStats(calls=30, labelled=30, correct=sum(category_ok)),
        "extract": PredictorStats(calls=30, labelled=30, correct=sum(order_ok)),
    }
    assert system.step_accuracy == {
        "classify": sum(category_ok) / 30,
        "extract": sum(order_ok) / 30,
    }
    expected = sum((c + o) / 2 for c, o in zip(category_ok, order_ok, strict=True)) / 30
    assert system.score == pytest.approx(expected)
    # No price table: a local model, which costs nothing.
    assert (system.cost_usd, system.priced) == (0.0, False)
    assert system.lm_calls == lm.usage.calls == 60
    assert system.models == ["scripted:student-model"]


def test_a_price_given_to_evaluate_system_prices_a_local_student(devset):
    lm = ap.ScriptedLM(half_wrong_student, model="student-model")
    program = TicketTriage()
    program.set_lm(lm)
    price = ap.Price(input=0.01, output=0.02)
    system = evaluate_system(
        "student", program, devset[:10], metric, price=price, display_progress=False
    )
    assert system.priced
    assert system.cost_usd == pytest.approx(
        price.cost(lm.usage.prompt_tokens, lm.usage.completion_tokens)
    )


def test_failed_runs_count_their_steps_and_are_left_out_of_latency(devset):
    def breaks_extract(signature, inputs):
        answer = teacher(signature, inputs)
        if "order_id" in answer and int(answer["order_id"][-1]) % 3 == 0:
            raise RuntimeError("backend down")  # the LM call fails: the program raises
        return answer

    failing = sum(int(e.order_id[-1]) % 3 == 0 for e in devset)
    assert 0 < failing < 30
    program = TicketTriage()
    program.set_lm(ap.ScriptedLM(breaks_extract))
    system = evaluate_system("broken", program, devset, metric, display_progress=False)
    assert system.errors == failing
    assert system.score == pytest.approx((30 - failing) / 30)
    assert system.predictors["classify"] == PredictorStats(30, 30, 30)
    # The failed extract calls are labelled and wrong; they got no reply to count tokens of.
    assert system.predictors["extract"] == PredictorStats(30, 30, 30 - failing)
    assert system.lm_calls == 60 - failing
    assert system.latency_p95_s > 0


def test_step_accuracy_is_none_for_a_predictor_without_labels(devset):
    unlabelled = [
        ap.Example(ticket=e.ticket, category=e.category).with_inputs("ticket") for e in devset[:8]
    ]
    program = TicketTriage()
    program.set_lm(ap.ScriptedLM(teacher))
    system = evaluate_system(
        "teacher",
        program,
        unlabelled,
        lambda example, pred: pred.category == example.category,
        display_progress=False,
    )
    assert system.step_accuracy == {"classify": 1.0, "extract": None}
    assert system.predictors["extract"] == PredictorStats(calls=8, labelled=0, correct=0)


def test_json_round_trip_keeps_every_number(teacher_run, student_run, tmp_path):
    for _, system in (teacher_run, student_run):
        path = system.to_json(tmp_path / "eval" / f"{system.name}.json")
        data = json.loads(path.read_text())
        assert data["version"] == 1
        assert data["predictors"]["classify"]["accuracy"] == system.step_accuracy["classify"]
        loaded = SystemEval.from_json(path)
        assert loaded == system
        assert loaded.result is None
        assert loaded.cost_per_1k == system.cost_per_1k
    data["version"] = 99
    with pytest.raises(ValueError, match="schema version 99"):
        SystemEval.from_dict(data)


def handmade(name: str, score: float, cost_usd: float, p50: float, priced: bool = True):
    return SystemEval(
        name=name,
        score=score,
        n=100,
        errors=0,
        latency_p50_s=p50,
        latency_p95_s=2 * p50,
        lm_calls=200,
        cached_calls=0,
        prompt_tokens=20_000,
        completion_tokens=3_000,
        cost_usd=cost_usd,
        priced=priced,
        predictors={"classify": PredictorStats(100, 100, int(score * 100))},
    )


def test_headline_numbers():
    systems = [
        handmade("teacher", 0.8, 0.2, 0.5),
        handmade("student (untrained)", 0.1, 0.05, 0.1),
        handmade("student (trained)", 0.6, 0.05, 0.1),
    ]
    assert headline(systems) == (
        "**student (trained)** keeps 75.0% of **teacher**'s metric (0.600 vs 0.800) "
        "at 25.0% of its cost ($0.5 vs $2 per 1k examples), "
        "5.0x lower p50 latency (100 ms vs 500 ms)."
    )
    local = [handmade("teacher", 0.8, 0.2, 0.5), handmade("student (trained)", 0.8, 0, 1.0, False)]
    assert headline(local) == (
        "**student (trained)** keeps 100.0% of **teacher**'s metric (0.800 vs 0.800) "
        "at 0.0% of its cost ($0 vs $2 per 1k examples), "
        "2.0x higher p50 latency (1.00 s vs 500 ms)."
    )
    assert headline(systems[:2]) == (
        "No headline: no system named 'student (trained)' "
        "(systems: 'teacher', 'student (untrained)')."
    )


def write_train_log(path):
    events = [
        {"step": 1, "epoch": 0, "loss": 4.0, "lr": 1e-3, "tokens_per_s": 900.0},
        {"step": 2, "epoch": 0, "loss": 2.5, "lr": 1e-3, "tokens_per_s": 950.0},
        {"step": 2, "epoch": 0, "val_loss": 2.75},
        {"step": 3, "epoch": 1, "loss": 1.25, "lr": 5e-4, "tokens_per_s": 960.0},
        # Resumed from the step-2 checkpoint: step 3 is logged again and the later wins.
        {"step": 3, "epoch": 1, "loss": 1.5, "lr": 5e-4, "tokens_per_s": 940.0},
        {"step": 4, "epoch": 1, "loss": 0.75, "lr": 1e-4, "tokens_per_s": 970.0},
        {"step": 4, "epoch": 1, "val_loss": 1.125},
    ]
    path.mkdir(parents=True)
    text = "".join(json.dumps(e) + "\n" for e in events) + '{"step": 5, "lo'  # torn line
    (path / "train_log.jsonl").write_text(text)
    return path


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 10_000


def test_report_shows_the_numbers_and_draws_the_plots(teacher_run, student_run, tmp_path):
    _, teacher_eval = teacher_run
    _, student_eval = student_run
    trained = SystemEval.from_dict({**teacher_eval.to_dict(), "name": "student (trained)"})
    trained.cost_usd, trained.priced, trained.score = 0.0, False, 0.9
    adapter = write_train_log(tmp_path / "adapters" / "multitask")
    systems = [teacher_eval, student_eval, trained]
    path = write_report(
        tmp_path / "report",
        systems,
        train_logs={"multitask": adapter},
        extra={"train examples": 200, "train time (s)": 12.34567},
    )
    text = path.read_text()
    assert path == tmp_path / "report" / "report.md"
    assert text.startswith("# apprentice: teacher vs student\n")
    assert headline(systems) in text
    assert "keeps 90.0% of **teacher**'s metric (0.900 vs 1.000) at 0.0% of its cost" in text
    teacher_cost = f"${teacher_eval.cost_per_1k:.3g}"
    student_row = next(line for line in text.splitlines() if line.startswith("| student (un"))
    classify = f"{100 * student_eval.step_accuracy['classify']:.1f}%"
    extract = f"{100 * student_eval.step_accuracy['extract']:.1f}%"
    assert student_row.startswith(
        f"| student (untrained) | {student_eval.score:.3f} | "
        f"{100 * student_eval.score:.1f}% | {classify} | {extract} | "
    )
    assert student_row.endswith(" | local ($0) | 30 (0) |")
    teacher_row = next(line for line in text.splitlines() if line.startswith("| teacher"))
    tokens = (
        f"{teacher_eval.prompt_tokens_per_call:.1f} / {teacher_eval.completion_tokens_per_call:.1f}"
    )
    assert "| 1.000 | 100.0% | 100.0% | 100.0% |" in teacher_row
    assert teacher_row.endswith(f" | {tokens} | {teacher_cost} | 30 (0) |")
    assert "| step acc: classify | step acc: extract |" in text
    # Training: the duplicate step keeps its later value, the torn line is skipped.
    assert "| multitask | 4 | 0.7500 | 1.1250 |" in text
    assert "- train examples: 200\n- train time (s): 12.35" in text
    assert_png(tmp_path / "report" / "loss.png")
    assert_png(tmp_path / "report" / "quality_cost.png")


def test_report_reruns_from_saved_json_alone(teacher_run, student_run, tmp_path):
    systems = [teacher_run[1], student_run[1]]
    first = write_report(tmp_path / "a", systems).read_text()
    paths = [s.to_json(tmp_path / "eval" / f"{i}.json") for i, s in enumerate(systems)]
    second = write_report(tmp_path / "b", [SystemEval.from_json(p) for p in paths]).read_text()
    assert second == first
    assert "No training logs: the loss curve is skipped." in second
    assert "No headline: no system named 'student (trained)'" in second
    assert not (tmp_path / "b" / "loss.png").exists()
    assert_png(tmp_path / "b" / "quality_cost.png")


def test_missing_training_log_is_noted_not_fatal(teacher_run, tmp_path):
    path = write_report(tmp_path, [teacher_run[1]], train_logs={"classify": tmp_path / "nowhere"})
    text = path.read_text()
    assert "No training logs: the loss curve is skipped." in text
    assert f"- classify: no training log at `{tmp_path / 'nowhere'}`" in text
    with pytest.raises(ValueError, match="at least one SystemEval"):
        write_report(tmp_path, [])


def test_a_system_whose_every_run_failed_shows_no_latency_not_zero_ms(devset, tmp_path):
    def down(signature, inputs):
        raise RuntimeError("backend down")

    program = TicketTriage()
    program.set_lm(ap.ScriptedLM(down))
    broken = evaluate_system("broken", program, devset, metric, display_progress=False)
    assert broken.errors == 30 and broken.latency_p50_s is None and broken.latency_p95_s is None
    fine = handmade("teacher", 1.0, 2.0, 0.5)
    again = SystemEval.from_dict(json.loads(json.dumps(broken.to_dict())))
    assert again.latency_p50_s is None
    text = write_report(tmp_path, [fine, again], baseline="teacher", candidate="broken").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| broken |"))
    # Before: "| 0 ms | 0 ms |", as if the failed system answered instantly.
    assert "| n/a | n/a |" in row and "0 ms" not in row
    assert "latency" not in text.splitlines()[2]  # no latency ratio in the headline
