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
