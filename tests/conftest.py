"""Test-wide setup: every test gets its own LM cache directory and fresh settings."""

from __future__ import annotations

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


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TEST_TIMEOUT_S))


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
