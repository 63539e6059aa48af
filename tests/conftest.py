"""Test-wide setup: every test gets its own LM cache directory and fresh settings."""

from __future__ import annotations

import os

import pytest

import apprentice.settings as settings_module


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("APPRENTICE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    saved = settings_module._root
    settings_module._root = settings_module.Settings()
    yield
    settings_module._root = saved


# pyproject's timeout (300 s) catches a hung test. A slow end-to-end test trains a model, and
# on a box shared with other work its training can take several times its quiet-box time:
# it gets 30 minutes unless it sets its own, so only a hang, never a busy box, fails it.
SLOW_TEST_TIMEOUT_S = 1800


# scripts/test runs the suite on 2 pytest-xdist workers: much of it waits on one thread (a
# subprocess importing torch, a server, vLLM's engine start), so 2 workers use the 2 cores that
# one leaves half idle. The scheduler below hands out whole modules, so module fixtures are
# built once. The modules of the real pretrained student are one unit, put first: its session
# fixtures (convert SmolLM2, train two adapters: ~5 min) are built once, and vLLM's engines
# (3.7 GB each) run one at a time on the worker that holds it, while the other worker takes
# every other module. (xdist's own ``--dist loadgroup`` does not group under pytest 9.2: it
# renames ``item._nodeid``, which no longer sets the node id.)
REAL_STUDENT_MODULES = {
    "tests/lm/test_vllm_contract.py",  # its ``real`` fixture asks for smollm2 at run time
    "tests/real_vllm/test_engine.py",
    "tests/serve/test_vllm_real_server.py",
    "tests/train/test_real_student.py",
}
REAL_STUDENT_FIXTURES = {"smollm2", "smollm2_trained", "smollm2_region"}
REAL_STUDENT = "real-student"


def _unit(nodeid: str) -> str:
    module = nodeid.split("::")[0]
    return REAL_STUDENT if module in REAL_STUDENT_MODULES else module


@pytest.hookimpl(optionalhook=True)  # pytest without xdist runs the suite in one process
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ModulesAndTheRealStudent(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    return ModulesAndTheRealStudent(config, log)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TEST_TIMEOUT_S))
        if REAL_STUDENT_FIXTURES & set(item.fixturenames) and _unit(item.nodeid) != REAL_STUDENT:
            raise pytest.UsageError(
                f"{item.nodeid} uses the real student's session fixtures: add its module to "
                "REAL_STUDENT_MODULES in tests/conftest.py, so one worker builds them"
            )
    items.sort(key=lambda item: _unit(item.nodeid) != REAL_STUDENT)  # stable: order kept


def pytest_configure(config):
    # vLLM's CPU build binds its worker's OpenMP threads to all cores but one by default
    # ("auto" keeps one for its scheduler): on a 2-core box, one thread. Both cores serve
    # SmolLM2 with an adapter 1.5x faster (8 rows of 24 tokens: 12.8-14.7 s vs 20.1-21.9 s),
    # and the real-vLLM tests are mostly that. Set before vLLM loads; a user's setting wins.
    if len(os.sched_getaffinity(0)) <= 2:
        cores = sorted(os.sched_getaffinity(0))
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, cores)))


# -- the real pretrained student (tests/real_student.py), once per session ---------------------
@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """SmolLM2-135M-Instruct converted from its GGUF file into a checkpoint folder."""
    from apprentice.gguf import convert_gguf
    from real_student import SMOLLM2

    return convert_gguf(SMOLLM2, tmp_path_factory.mktemp("smollm2") / "checkpoint")


@pytest.fixture(scope="session")
def smollm2_trained(smollm2, tmp_path_factory):
    """(run root, optimizer, program): the ``multitask`` adapter, trained by BootstrapFinetune."""
    from real_student import train_multitask

    root = tmp_path_factory.mktemp("lora")
    optimizer, program = train_multitask(smollm2, root)
    return root, optimizer, program


@pytest.fixture(scope="session")
def smollm2_region(smollm2, tmp_path_factory):
    """(run dir, program): the ``region`` adapter on the same base."""
    from real_student import train_region

    root = tmp_path_factory.mktemp("region")
    return root / "region", train_region(smollm2, root)
