"""Binding adapters into a program and hot-swapping them while it runs, through our server
(OpenAILM) and in-process (LocalLM): later answers come from the new adapter, the cache
never answers with the old one, and a saved program keeps its binding."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from serve_helpers import MAX_NEW, client
from test_server import call

import apprentice as ap
from apprentice.lm.cache import Cache
from apprentice.lm.openai import OpenAILM
from apprentice.serve.swap import bind, swap_adapter


class QA(ap.Module):
    def __init__(self) -> None:
        self.answer = ap.Predict("question -> answer")
        self.check = ap.Predict("question, answer -> verdict")

    def forward(self, question: str):
        return self.answer(question=question)


QUESTIONS = [f"Where is order A{10000 + 7 * i}? It is late." for i in range(20)]


def answers(program, questions) -> list[str]:
    """The program run over ``questions`` from 8 threads (their calls meet in batches)."""
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda q: program(question=q).answer, questions))


@pytest.fixture(scope="module")
def expected(students):
    """Adapter -> the program's answers to QUESTIONS, computed in-process without a cache."""
    from apprentice.lm.local import LocalLM

    student = students["causal"]
    lm = LocalLM(student.base, adapters=student.adapters, max_new_tokens=MAX_NEW)
    program = QA()
    found = {}
    for adapter in ("a", "b"):
        bind(program, lm, adapter=adapter)
        found[adapter] = dict(zip(QUESTIONS, answers(program, QUESTIONS), strict=True))
    assert sum(found["a"][q] != found["b"][q] for q in QUESTIONS) >= len(QUESTIONS) // 2
    return found


def test_swap_mid_run_answers_with_the_new_adapter_and_never_from_a_stale_cache(
    serve, expected, tmp_path
):
    server = serve()
    cache = Cache(tmp_path / "cache.sqlite")
    program = QA()
    bound = bind(program, client(server, cache=cache), adapter="a")
    assert set(bound) == {"answer", "check"} and bound["answer"].adapter == "a"
    early, rest = QUESTIONS[:8], QUESTIONS[8:]
    assert answers(program, early) == [expected["a"][q] for q in early]  # cached under a

    swapped = threading.Event()
    done = threading.Semaphore(0)
    window: dict[str, float] = {}

    def run(question: str, after_swap: bool):
        if after_swap:  # the questions answered (and cached) under a, asked again after the swap
            swapped.wait()
        started = time.perf_counter()
        answer = program(question=question).answer
        done.release()
        return question, started, answer

    hits_before = cache.hits
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(run, q, False) for q in rest]
        futures += [pool.submit(run, q, True) for q in early]
        for _ in range(6):
            done.acquire()  # six answers are in; the program is still running
        window["began"] = time.perf_counter()
        swap_adapter(program, "b")
        window["ended"] = time.perf_counter()
        swapped.set()
        results = [f.result() for f in futures]
    before = [(q, a) for q, started, a in results if started < window["began"]]
    after = [(q, a) for q, started, a in results if started > window["ended"]]
    assert len(before) >= 6 and len(after) >= len(early)
    assert all(a == expected["a"][q] for q, a in before)
    assert all(a == expected["b"][q] for q, a in after)
    assert cache.hits == hits_before  # nothing answered from the cache across the swap
    # asked again under b: now from the cache, and still b's answers
    assert answers(program, early) == [expected["b"][q] for q in early]
    assert cache.hits == hits_before + len(early)
    assert {p.lm.adapter for p in program.predictors()} == {"b"}


def test_an_adapter_reloaded_under_the_same_name_changes_the_cache_key(
    serve, students, expected, tmp_path
):
    server = serve()
    paths = students["causal"].adapters
    load = {"lora_name": "hot", "lora_path": str(paths["a"])}
    assert call(server, "POST", "/v1/load_lora_adapter", load)[0] == 200
    try:
        program = QA()
        bind(program, client(server, cache=Cache(tmp_path / "c.sqlite")), adapter="hot")
        first_hash = program.answer.lm.adapter_hash
        assert first_hash == server.lm.engine.adapter_hash("hot")
        assert answers(program, QUESTIONS[:4]) == [expected["a"][q] for q in QUESTIONS[:4]]
        reload = {"lora_name": "hot", "lora_path": str(paths["b"]), "load_inplace": True}
        assert call(server, "POST", "/v1/load_lora_adapter", reload)[0] == 200
        swap_adapter(program, "hot")  # re-reads the adapter's hash from /v1/models
        assert program.answer.lm.adapter_hash not in (None, first_hash)
        assert answers(program, QUESTIONS[:4]) == [expected["b"][q] for q in QUESTIONS[:4]]
    finally:
        call(server, "POST", "/v1/unload_lora_adapter", {"lora_name": "hot"})


def test_in_process_swap_follows_the_engine_adapter_table(local_lm, students, expected, tmp_path):
    lm = local_lm(cache=Cache(tmp_path / "c.sqlite"))
    program = QA()
    bind(program, lm, adapter="a", predictors=["answer"])
    assert program.check.lm is None and program.answer.lm.adapter == "a"
    assert answers(program, QUESTIONS[:3]) == [expected["a"][q] for q in QUESTIONS[:3]]
    swap_adapter(program, "b", predictors=["answer"])
    assert answers(program, QUESTIONS[:3]) == [expected["b"][q] for q in QUESTIONS[:3]]
    # re-loading a name with other weights changes the key at once: nothing to re-bind
    lm.load_adapter("local-hot", students["causal"].adapters["a"])
    try:
        swap_adapter(program, "local-hot", predictors=["answer"])
        assert answers(program, QUESTIONS[:3]) == [expected["a"][q] for q in QUESTIONS[:3]]
        lm.load_adapter("local-hot", students["causal"].adapters["b"], replace=True)
        assert answers(program, QUESTIONS[:3]) == [expected["b"][q] for q in QUESTIONS[:3]]
    finally:
        lm.unload_adapter("local-hot")
    with pytest.raises(ValueError, match="no LM of their own"):
        swap_adapter(program, "a")  # `check` was never bound
    with pytest.raises(KeyError, match="no predictors"):
        swap_adapter(program, "a", predictors=["nope"])


def test_unknown_adapters_are_refused_before_anything_changes(serve):
    server = serve()
    program = QA()
    bind(program, client(server), adapter="a")
    with pytest.raises(ValueError, match="does not serve adapter 'zzz'"):
        swap_adapter(program, "zzz")
    assert {p.lm.adapter for p in program.predictors()} == {"a"}
    with pytest.raises(TypeError, match="no adapters to swap"):
        bind(program, ap.ScriptedLM(lambda *a: "x"), adapter="a")


@pytest.mark.parametrize("backend", ["openai", "local"])
def test_a_saved_program_keeps_its_backend_and_adapter(
    serve, local_lm, expected, tmp_path, backend
):
    server = serve()
    lm = client(server) if backend == "openai" else local_lm()
    program = QA()
    bind(program, lm, adapter="b")
    path = program.save(tmp_path / "program.json")
    loaded = QA().load(path, trusted=True)  # a file this test wrote
    for original, restored in zip(program.predictors(), loaded.predictors(), strict=True):
        assert type(restored.lm) is type(original.lm)
        assert restored.lm.identity == original.lm.identity  # backend, model, adapter, hash
    if backend == "openai":
        assert isinstance(loaded.answer.lm, OpenAILM)
        assert loaded.answer.lm.base_url == server.base_url
    assert answers(loaded, QUESTIONS[:3]) == [expected["b"][q] for q in QUESTIONS[:3]]
