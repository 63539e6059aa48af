"""The binding layer: a trained student is bound on the backend its serve config names.

The ``openai`` backend is exercised against our own server over loopback HTTP: the adapter
is loaded into the server by a name that carries its content hash, and the bound program
answers exactly as the in-process student with that adapter does.
"""

from __future__ import annotations

import pytest
from serve_helpers import MAX_NEW
from test_swap import QA, QUESTIONS, answers

import apprentice as ap
from apprentice.lm.local import LocalLM
from apprentice.lm.openai import OpenAILM
from apprentice.serve.binding import bind_student, student_lm, vllm_rank
from apprentice.serve.config import ServeConfig
from apprentice.serve.swap import served_adapters
from apprentice.train.export import read_manifest

GROUPS = {"a": ["answer", "check"]}


@pytest.fixture(autouse=True)
def engine_left_as_found(students):
    """The engine is shared by every test on this base: adapters a test adds go again."""
    engine = LocalLM(students["causal"].base, max_new_tokens=MAX_NEW).engine
    before = set(engine.adapter_names())
    yield
    for name in set(engine.adapter_names()) - before:
        engine.unload_adapter(name)


def test_openai_backend_loads_the_adapter_into_the_server_under_a_versioned_name(
    serve, students, tmp_path
):
    student = students["causal"]
    server = serve()
    config = ServeConfig(
        backend="openai",
        base_url=server.base_url,
        model=server.model_name,
        max_new_tokens=MAX_NEW,
    )
    adapter_dir = student.adapters["a"]
    digest = read_manifest(adapter_dir).adapter_hash
    program = bind_student(QA(), GROUPS, {"a": adapter_dir}, str(student.base), config)

    lm = program.answer.lm
    assert isinstance(lm, OpenAILM) and lm.adapter == f"a-{digest[:8]}"
    assert program.check.lm.adapter == lm.adapter
    assert served_adapters(lm)[lm.adapter] == digest  # loaded by bind, with its content

    local = LocalLM(student.base, adapters=student.adapters, adapter="a", max_new_tokens=MAX_NEW)
    direct = QA()
    direct.set_lm(local)
    assert answers(program, QUESTIONS[:6]) == answers(direct, QUESTIONS[:6])

    # Binding again finds the adapter served and does not load it a second time.
    again = bind_student(QA(), GROUPS, {"a": adapter_dir}, str(student.base), config)
    assert again.answer.lm.adapter == lm.adapter
    # The saved program keeps the backend and the adapter.
    restored = QA().load(
        program.save(tmp_path / "program.json"),
        trusted=True,
    )
    assert isinstance(restored.answer.lm, OpenAILM) and restored.answer.lm.adapter == lm.adapter


def test_local_backend_binds_the_engine_and_a_clashing_name_gets_its_hash(students):
    student = students["causal"]
    config = ServeConfig(backend="local", max_new_tokens=MAX_NEW)
    # "a" is loaded with a's weights; binding b's folder under the name "a" must not
    # replace it: the second one is served as "a-<hash of b>".
    first = bind_student(QA(), GROUPS, {"a": student.adapters["a"]}, str(student.base), config)
    assert isinstance(first.answer.lm, LocalLM) and first.answer.lm.adapter == "a"
    second = bind_student(QA(), GROUPS, {"a": student.adapters["b"]}, str(student.base), config)
    digest = read_manifest(student.adapters["b"]).adapter_hash
    assert second.answer.lm.adapter == f"a-{digest[:8]}"
    assert first.answer.lm.engine is second.answer.lm.engine


def test_serve_config_refuses_options_its_backend_cannot_use():
    with pytest.raises(ValueError, match="needs serve.base_url"):
        ServeConfig(backend="openai")
    with pytest.raises(ValueError, match="apply to backend 'vllm' only"):
        ServeConfig(backend="local", tensor_parallel_size=2)
    assert ServeConfig(backend="vllm", tensor_parallel_size=2).tensor_parallel_size == 2


def test_the_vllm_rank_holds_every_adapter():
    # 16 (vLLM's default) unless an adapter needs more: programs share one engine per base
    assert vllm_rank([4]) == 16 and vllm_rank([16, 12]) == 16 and vllm_rank([24]) == 32
    assert vllm_rank([300]) == 320
    with pytest.raises(ValueError, match="above vLLM's largest"):
        vllm_rank([1024])


def test_untrained_students_come_from_the_same_binding(students):
    student = students["causal"]
    lm = student_lm(ServeConfig(max_new_tokens=7), str(student.base))
    assert isinstance(lm, LocalLM) and lm.max_new_tokens == 7 and lm.adapter is None


class Twins(ap.Module):
    """Two predictors whose paths, dots as underscores, are the same name: ``a.b``, ``a_b``."""

    def __init__(self) -> None:
        self.a = {"b": ap.Predict("question -> answer")}
        self.a_b = ap.Predict("question -> answer")


def test_predictors_a_dot_b_and_a_underscore_b_get_their_own_adapters(students):
    from apprentice.pipeline import adapter_groups

    groups = adapter_groups(Twins(), multitask=False)
    # Before: {"a_b": ["a_b"]}: one name for both, the second overwrote the first.
    assert sorted(groups.values()) == [["a.b"], ["a_b"]]
    assert all(name.startswith("a_b-") and len(name) == len("a_b-") + 8 for name in groups)
    assert adapter_groups(Twins(), multitask=False) == groups  # stable across runs
    assert adapter_groups(QA(), multitask=False) == {"answer": ["answer"], "check": ["check"]}

    student = students["causal"]
    dot, under = (next(n for n, g in groups.items() if g == [p]) for p in ("a.b", "a_b"))
    dirs = {dot: student.adapters["a"], under: student.adapters["b"]}
    config = ServeConfig(backend="local", max_new_tokens=MAX_NEW)
    program = bind_student(Twins(), groups, dirs, str(student.base), config)
    assert program.a["b"].lm.adapter == dot and program.a_b.lm.adapter == under
    with pytest.raises(ValueError, match=r"no adapter group holds the predictor\(s\) \['a_b'\]"):
        bind_student(Twins(), {dot: ["a.b"]}, {dot: dirs[dot]}, str(student.base), config)
