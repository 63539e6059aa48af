"""CPU training threads: the idle cores when a run starts, kept for its resume."""

from __future__ import annotations

import shutil

import pytest
import torch
from pydantic import ValidationError

import apprentice.train.cpu as threads
from apprentice.train.config import LoraConfig, TrainConfig
from apprentice.train.sft import train_adapter


def _fake_proc_stat(monkeypatch, busy_fraction: float, cores: int = 2) -> None:
    samples = iter([(0, 0), (int(1000 * busy_fraction), 1000)])
    monkeypatch.setattr(threads, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(threads, "_usable_cores", lambda: cores)
    monkeypatch.setattr(threads.time, "sleep", lambda s: None)


@pytest.mark.parametrize(("busy", "expected"), [(0.0, 2), (0.5, 1), (0.95, 1), (0.2, 2)])
def test_auto_uses_the_idle_cores_and_never_fewer_than_one(monkeypatch, busy, expected):
    _fake_proc_stat(monkeypatch, busy)
    assert threads.choose_threads("auto") == expected


def test_a_number_is_used_as_given_and_the_old_count_comes_back():
    assert threads.choose_threads(3) == 3
    before = torch.get_num_threads()
    with threads.cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    assert 1 <= threads.choose_threads("auto") <= threads._usable_cores()


def test_bad_thread_settings_are_refused():
    with pytest.raises(ValidationError, match="num_threads"):
        TrainConfig(num_threads=0)
    with pytest.raises(ValidationError):
        TrainConfig(num_threads="many")


def test_a_resumed_run_keeps_the_thread_count_it_started_with(
    demo_dataset, tiny_causal, tmp_path, monkeypatch
):
    config = TrainConfig(max_steps=4, save_every=2, batch_size=8, logging_steps=1)
    monkeypatch.setattr("apprentice.train.sft.choose_threads", lambda setting: 1)
    first = train_adapter(
        demo_dataset, tiny_causal, tmp_path, lora=LoraConfig(r=8), train=config, progress=False
    )
    assert first.metrics["num_threads"] == 1
    # Resume from the step-2 checkpoint on a box that now looks idle: still 1 thread.
    shutil.rmtree(tmp_path / "adapter")
    for late in (tmp_path / "checkpoints").glob("step-4"):
        shutil.rmtree(late)
    monkeypatch.setattr("apprentice.train.sft.choose_threads", lambda setting: 2)
    again = train_adapter(
        demo_dataset, tiny_causal, tmp_path, lora=LoraConfig(r=8), train=config, progress=False
    )
    assert again.metrics["num_threads"] == 1
    fixed = TrainConfig(max_steps=2, batch_size=8, num_threads=2)
    assert (
        train_adapter(
            demo_dataset, tiny_causal, tmp_path / "b", train=fixed, progress=False
        ).metrics["num_threads"]
        == 2
    )


def test_bf16_auto_is_on_for_real_students_on_a_bf16_cpu_only(monkeypatch):
    from apprentice.train import model

    monkeypatch.setattr(model, "cpu_has_bf16", lambda: True)
    assert model.use_bf16("auto", "cpu", 135_000_000) is True
    assert model.use_bf16("auto", "cpu", 800_000) is False  # tiny: element-wise bound
    assert model.use_bf16(False, "cpu", 135_000_000) is False
    monkeypatch.setattr(model, "cpu_has_bf16", lambda: False)
    assert model.use_bf16("auto", "cpu", 135_000_000) is False
    assert model.use_bf16(True, "cpu", 800_000) is True
    assert isinstance(threads.cpu_has_bf16(), bool)


def test_forced_bf16_on_a_cpu_without_bf16_units_is_warned_about(monkeypatch):
    from apprentice.train import model

    monkeypatch.setattr(model, "cpu_has_bf16", lambda: False)
    warning = model.slow_bf16_warning(True, "cpu")
    assert warning is not None and "train.bf16: auto" in warning
    assert model.slow_bf16_warning(False, "cpu") is None
    assert model.slow_bf16_warning(True, "cuda") is None
    monkeypatch.setattr(model, "cpu_has_bf16", lambda: True)
    assert model.slow_bf16_warning(True, "cpu") is None
