"""Serving loads a base as its adapters trained (student_loading.serving_loading and
trained_options): each option the caller does not set comes from the manifests, an option
the caller sets wins, and what a backend cannot honour is refused or warned about in one
line that names the option."""

from __future__ import annotations

import json
import logging

import pytest

from apprentice.adapter import MERGED_STAMP, AdapterManifest, write_manifest
from apprentice.student_loading import StudentLoading, serving_loading, trained_options
from trained_base import REVISION, adapter_trained_with

HUB = "org/student"


def test_unset_options_come_from_the_manifests_and_set_ones_win():
    trained = {"adapter 'a'": {"dtype": "bfloat16", "revision": REVISION}}
    loading = serving_loading(None, trained, HUB)
    assert loading == StudentLoading(dtype="bfloat16", revision=REVISION)
    assert loading.model_fields_set == set(StudentLoading.model_fields)  # all decided
    given = serving_loading({"dtype": "float32", "attn_implementation": "eager"}, trained, HUB)
    assert given == StudentLoading(dtype="float32", revision=REVISION, attn_implementation="eager")
    # a StudentLoading sets the fields it was made with; a recipe's sets them all
    assert serving_loading(StudentLoading(revision="v2"), trained, HUB).dtype == "bfloat16"
    assert serving_loading(StudentLoading(**StudentLoading().model_dump()), trained, HUB) == (
        StudentLoading()
    )
    assert serving_loading(None, {}, HUB) == StudentLoading()


def test_the_served_dtype_is_the_callers_else_the_students():
    bf16 = StudentLoading(dtype="bfloat16")
    assert bf16.serving_dtype(None) == "bfloat16"
    assert bf16.serving_dtype("auto") == "bfloat16"
    assert bf16.serving_dtype("float32") == "float32"
    assert StudentLoading().serving_dtype("auto") == "auto"
    assert StudentLoading().serving_dtype(None) is None


def test_adapters_trained_on_a_base_loaded_two_ways_are_refused_unless_told_one():
    trained = {"adapter 'a'": {"dtype": "bfloat16"}, "adapter 'b'": {}}
    with pytest.raises(ValueError, match=r"adapter 'a' with dtype='bfloat16', adapter 'b' with "):
        serving_loading(None, trained, HUB)
    assert serving_loading({"dtype": "float32"}, trained, HUB).dtype == "float32"


def test_remote_code_is_never_taken_from_a_manifest_alone():
    trained = {"adapter 'a'": {"trust_remote_code": True}}
    with pytest.raises(PermissionError, match=r"adapter 'a' trained with trust_remote_code.*"):
        serving_loading(None, trained, HUB)
    assert serving_loading({"trust_remote_code": True}, trained, HUB).trust_remote_code


def test_4bit_that_cannot_load_here_is_served_unquantized_or_refused_when_asked(caplog):
    trained = {"adapter 'a'": {"load_in_4bit": True}}
    here = serving_loading(None, trained, HUB, why_no_4bit=lambda: None)
    assert here.load_in_4bit
    with caplog.at_level(logging.WARNING, logger="apprentice.student_loading"):
        loading = serving_loading(None, trained, HUB, why_no_4bit=lambda: "no CUDA GPU")
    assert not loading.load_in_4bit
    [line] = [r.getMessage() for r in caplog.records]
    assert "adapter 'a' trained on a 4-bit base (load_in_4bit)" in line and "no CUDA GPU" in line
    with pytest.raises(ValueError, match=r"load_in_4bit is set.*no CUDA GPU; unset load_in_4bit"):
        serving_loading({"load_in_4bit": True}, trained, HUB, why_no_4bit=lambda: "no CUDA GPU")


def test_a_hub_revision_is_dropped_for_a_local_folder(tmp_path, caplog):
    trained = {"adapter 'a'": {"revision": REVISION, "dtype": "bfloat16"}}
    with caplog.at_level(logging.WARNING, logger="apprentice.student_loading"):
        loading = serving_loading(None, trained, tmp_path)
    assert loading == StudentLoading(dtype="bfloat16")
    assert f"revision {REVISION}" in caplog.text and "no revisions" in caplog.text


def test_unreadable_options_name_their_manifest():
    with pytest.raises(ValueError, match=r"adapter 'a' records base_model_options .*'fp8'"):
        serving_loading(None, {"adapter 'a'": {"dtype": "fp8"}}, HUB)


def test_trained_options_read_adapters_full_finetunes_and_merged_models(tmp_path):
    peft = tmp_path / "peft"
    peft.mkdir()
    (peft / "adapter_config.json").write_text("{}")
    (peft / "adapter_model.safetensors").write_bytes(b"")
    options = {"dtype": "bfloat16", "revision": REVISION, "load_in_4bit": True}
    adapter = adapter_trained_with(peft, tmp_path / "a", options)
    assert trained_options(HUB, {"a": adapter, "plain": peft}) == {"adapter 'a'": options}
    # a full finetune's folder, and a merged model's: whole weights, no revision, no 4-bit
    full = tmp_path / "full"
    full.mkdir()
    (full / "adapter_model.safetensors").write_bytes(b"")
    manifest = AdapterManifest(
        **{**json.loads((adapter / "manifest.json").read_text()), "method": "full", "name": "f"}
    )
    write_manifest(full, manifest)
    assert trained_options(full) == {"full finetune 'f'": {"dtype": "bfloat16"}}
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / MERGED_STAMP).write_text(json.dumps({"base_model_options": options}))
    assert trained_options(merged) == {"merged model 'merged'": {"dtype": "bfloat16"}}
    assert trained_options(HUB) == {}
