"""Settings: configure() defaults, context() overrides, isolation across threads and tasks."""

from __future__ import annotations

import asyncio
import sys
import threading

import pytest

import apprentice as ap
import apprentice.settings as settings_module
from apprentice.settings import settings as current


def echo_lm(name: str) -> ap.ScriptedLM:
    """An LM that answers with its own name, so a prediction shows which LM served it."""
    return ap.ScriptedLM(lambda signature, inputs: {"answer": name}, model=name)


def ask() -> str:
    return ap.Predict("question -> answer")(question="who?").answer


def test_defaults_are_empty():
    now = current()
    assert now.lm is None and now.format is None and now.observers == ()


def test_configure_sets_the_process_default():
    lm = echo_lm("A")
    ap.configure(lm=lm)
    assert current().lm is lm
    assert ask() == "A"
    ap.configure(lm=echo_lm("B"))
    assert ask() == "B"


def test_context_overrides_nest_and_restore():
    a, b, c = echo_lm("A"), echo_lm("B"), echo_lm("C")
    fmt = ap.JSONFormat()
    ap.configure(lm=a)
    with ap.context(lm=b) as outer:
        assert outer.lm is b and ask() == "B"
        with ap.context(format=fmt) as inner:
            assert inner.lm is b and inner.format is fmt  # inherits the outer override
            with ap.context(lm=c):
                assert ask() == "C" and current().format is fmt
            assert current().lm is b
        assert current().format is None
    assert current().lm is a and ask() == "A"


def test_context_restores_after_an_exception():
    ap.configure(lm=echo_lm("A"))
    with pytest.raises(RuntimeError, match="boom"), ap.context(lm=echo_lm("B")):
        raise RuntimeError("boom")
    assert ask() == "A"


def test_context_does_not_touch_the_process_default():
    root = settings_module._root
    with ap.context(lm=echo_lm("B")):
        assert settings_module._root is root
    assert settings_module._root is root


def test_configure_inside_a_context_shows_through_unless_overridden():
    fmt = ap.JSONFormat()
    with ap.context(format=fmt):
        ap.configure(lm=echo_lm("late"))
        assert current().lm.model == "late"  # not overridden here: configure's value
        assert current().format is fmt
        with ap.context(lm=echo_lm("B")):
            ap.configure(lm=echo_lm("later"))
            assert current().lm.model == "B"  # overridden here: the override wins
    assert current().lm.model == "later"


def test_unknown_setting_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match=r"unknown setting\(s\) \['lmm'\]; known: .*'lm'"):
        ap.configure(lmm=echo_lm("A"))
    with pytest.raises(TypeError, match=r"\['temperature'\]"), ap.context(temperature=0.1):
        pass
    assert current().lm is None


def test_bad_values_name_the_value():
    with pytest.raises(TypeError, match=r"lm='gpt-4o' is not an LM.*ap.OpenAILM"):
        ap.configure(lm="gpt-4o")
    with pytest.raises(TypeError, match=r"format='json' is not a Format"):
        ap.configure(format="json")
    with (
        pytest.raises(TypeError, match=r"observers must be callables; 3 is not"),
        ap.context(observers=[print, 3]),
    ):
        pass
    with pytest.raises(TypeError, match=r"observers=<built-in function print> must be a tuple"):
        ap.configure(observers=print)
    assert current() == settings_module.Settings()


def test_observers_list_is_stored_as_a_tuple():
    with ap.context(observers=[print]):
        assert current().observers == (print,)


def test_context_overrides_are_isolated_between_threads():
    ap.configure(lm=echo_lm("default"))
    barrier = threading.Barrier(2, timeout=5)
    seen: dict[str, list[str]] = {}

    def worker(name: str) -> None:
        with ap.context(lm=echo_lm(name)):
            barrier.wait()  # both threads are now inside their own context
            first = ask()
            barrier.wait()  # ... and both asked before either leaves it
            seen[name] = [first, ask()]
        seen[name].append(ask())

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("T1", "T2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"T1": ["T1", "T1", "default"], "T2": ["T2", "T2", "default"]}
    assert ask() == "default"


@pytest.mark.skipif(
    bool(getattr(sys.flags, "thread_inherit_context", 0)),
    reason="threads inherit the starter's context on this interpreter",
)
def test_a_plain_thread_does_not_see_the_starters_override():
    ap.configure(lm=echo_lm("default"))
    seen = []
    with ap.context(lm=echo_lm("main")):
        t = threading.Thread(target=lambda: seen.append(ask()))
        t.start()
        t.join()
        assert ask() == "main"
    assert seen == ["default"]


def test_asyncio_tasks_each_keep_their_own_context():
    ap.configure(lm=echo_lm("default"))
    predict = ap.Predict("question -> answer")

    async def task(name: str) -> list[str]:
        with ap.context(lm=echo_lm(name)):
            await asyncio.sleep(0)  # let the other tasks enter their contexts
            first = (await predict.acall(question="?")).answer
            await asyncio.sleep(0)
            return [first, current().lm.model]

    async def main() -> tuple[list[list[str]], str]:
        results = await asyncio.gather(*(task(f"task{i}") for i in range(4)))
        return results, current().lm.model

    results, after = asyncio.run(main())
    assert results == [[f"task{i}", f"task{i}"] for i in range(4)]
    assert after == "default"


def test_a_task_inherits_its_creators_context_but_does_not_leak_back():
    async def child() -> str:
        before = current().lm.model
        with ap.context(lm=echo_lm("child")):
            await asyncio.sleep(0)
        return before

    async def main() -> tuple[str, str]:
        with ap.context(lm=echo_lm("parent")):
            inherited = await asyncio.create_task(child())
            return inherited, current().lm.model

    assert asyncio.run(main()) == ("parent", "parent")


def test_evaluate_worker_threads_see_the_callers_override():
    ap.configure(lm=echo_lm("default"))
    devset = [ap.Example(question=f"q{i}", answer="B").with_inputs("question") for i in range(12)]
    program = ap.Predict("question -> answer")
    evaluate = ap.Evaluate(
        devset=devset, metric=ap.answer_exact_match, num_threads=4, display_progress=False
    )
    with ap.context(lm=echo_lm("B")):
        assert evaluate(program).score == 1.0
    result = evaluate(program)  # outside the block: configure's LM again
    assert result.score == 0.0
    assert {r.prediction.answer for r in result.results} == {"default"}


def test_override_made_by_one_evaluated_example_stays_in_that_example():
    ap.configure(lm=echo_lm("default"))
    devset = [ap.Example(question=f"q{i}", answer="x").with_inputs("question") for i in range(8)]
    leaked = []

    def program(question):
        leaked.append(current().format)
        ap.context(format=ap.JSONFormat()).__enter__()  # entered and never left
        return ap.Prediction(answer="x")

    ap.Evaluate(devset=devset, metric=ap.answer_exact_match, num_threads=1)(program)
    assert leaked == [None] * 8
    assert current().format is None


def test_settings_attributes_read_the_setting_in_force_and_refuse_writes():
    a, b = echo_lm("A"), echo_lm("B")
    ap.configure(lm=a)
    assert ap.settings.lm is a and ap.settings.max_backtracks == 2
    with ap.context(lm=b, max_backtracks=0):
        assert ap.settings.lm is b and ap.settings.max_backtracks == 0
    assert ap.settings.lm is a
    ap.settings.configure(lm=b)  # DSPy's spelling of ap.configure
    assert ap.settings.lm is b
    with pytest.raises(AttributeError, match=r"read-only: write ap.configure\(lm=...\)"):
        ap.settings.lm = a
    with pytest.raises(AttributeError, match="has no attribute 'lmm'"):
        ap.settings.lmm  # noqa: B018
