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
