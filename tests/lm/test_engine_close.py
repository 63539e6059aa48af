"""Closing an engine (``Engine.close``, ``release_engines``) while requests arrive: every
request is answered or fails, none waits forever. The batch is held at a gate, so each
interleaving is set up exactly rather than hoped for."""

from __future__ import annotations

import threading

import pytest
from engine_stub import StubEngine, ask

WAIT_S = 30  # far above the milliseconds these take: only a hang reaches it


def _close_in_background(engine: StubEngine) -> threading.Thread:
    closing = threading.Thread(target=engine.close, daemon=True)
    closing.start()
    return closing


def _until(condition) -> None:
    done = threading.Event()
    for _ in range(WAIT_S * 100):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("the condition did not hold in time")


def test_a_request_submitted_while_close_drains_is_answered():
    engine = StubEngine()
    engine.gate.clear()
    [first] = engine.submit([ask("first")], [None], batch_wait_ms=0)
    assert engine.running.wait(WAIT_S)  # the first batch runs, held at the gate
    closing = _close_in_background(engine)
    _until(lambda: engine._queue.qsize() == 1)  # close's stop mark is queued
    [late] = engine.submit([ask("late")], [None], batch_wait_ms=0)  # queued behind it
    engine.gate.set()
    closing.join(WAIT_S)
    assert not closing.is_alive()
    assert first.result(WAIT_S).text == "batch 1"
    assert late.result(WAIT_S).text == "batch 2"  # before: never answered
    assert engine._thread is None  # and the thread did stop


def test_a_request_after_close_starts_the_thread_again():
    engine = StubEngine()
    [before] = engine.submit([ask("before")], [None], batch_wait_ms=0)
    assert before.result(WAIT_S).text == "batch 1"
    engine.close()
    engine.close()  # twice: nothing to stop
    assert engine._thread is None
    [after] = engine.submit([ask("after")], [None], batch_wait_ms=0)
    assert after.result(WAIT_S).text == "batch 2"
    engine.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_thread_that_dies_fails_what_waits_on_it(monkeypatch):
    engine = StubEngine()
    engine.gate.clear()

    class Stop(BaseException):  # as KeyboardInterrupt: past the per-batch guard
        pass

    def die(jobs):
        engine.running.set()
        engine.gate.wait()
        raise Stop

    monkeypatch.setattr(engine, "_generate", die)
    [first] = engine.submit([ask("first")], [None], batch_wait_ms=0)
    assert engine.running.wait(WAIT_S)
    [queued] = engine.submit([ask("queued")], [None], batch_wait_ms=0)
    thread = engine._thread
    engine.gate.set()
    thread.join(WAIT_S)
    for future in (first, queued):
        with pytest.raises(Exception, match="stub backend failed: Stop"):
            future.result(WAIT_S)
    monkeypatch.undo()
    [again] = engine.submit([ask("again")], [None], batch_wait_ms=0)  # a new thread
    assert again.result(WAIT_S).text == "batch 1"
    engine.close()


def test_a_large_request_delays_a_small_one_by_one_batch_not_all_of_its_own():
    engine = StubEngine()
    engine.gate.clear()
    big = engine.submit([ask(f"big{i}") for i in range(6)], [None] * 6, max_batch_size=1)
    assert engine.running.wait(WAIT_S)  # big0 runs, held at the gate
    [small] = engine.submit([ask("small")], [None], max_batch_size=1)
    engine.gate.set()
    assert small.result(WAIT_S).text == "batch 2"  # before: batch 7, after all of big's
    assert [f.result(WAIT_S).text for f in big] == ["batch 1", *(f"batch {i}" for i in range(3, 8))]
    engine.close()


def test_one_long_encode_does_not_hold_up_the_others():
    """Each thread borrows a tokenizer copy: a long encode no longer holds one lock for all."""
    from apprentice.lm.engine import Engine

    slow_started, release = threading.Event(), threading.Event()

    class Tokenizer:
        def __call__(self, text, add_special_tokens):
            if text == "slow":
                slow_started.set()
                release.wait(WAIT_S)
            return {"input_ids": [len(text)]}

        def __deepcopy__(self, memo):
            return Tokenizer()

    engine = StubEngine()
    engine.tokenizer = Tokenizer()
    import apprentice.formats.prompt as prompt

    original = prompt.render_prompt
    prompt.render_prompt = lambda messages, tokenizer, kind, **template: messages[-1]["content"]
    try:
        slow = threading.Thread(target=Engine.encode, args=(engine, ask("slow").messages))
        slow.start()
        assert slow_started.wait(WAIT_S)
        done = []
        fast = threading.Thread(
            target=lambda: done.append(Engine.encode(engine, ask("fast").messages)), daemon=True
        )
        fast.start()
        fast.join(WAIT_S)
        assert done == [[4]]  # before: waited on the slow one's lock
    finally:
        release.set()
        slow.join(WAIT_S)
        prompt.render_prompt = original
