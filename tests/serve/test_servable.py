"""What ``apprentice serve TARGET`` finds to serve: run directories, one adapter, a full
finetune, a plain PEFT directory; and the CLI's refusals."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
from serve_helpers import MAX_NEW

from apprentice.lm.base import Request
from apprentice.lm.local import LocalLM
from apprentice.serve.cli import add_serve_arguments, local_server, run_serve
from apprentice.serve.servable import find_servable
from apprentice.train.export import AdapterManifest, read_manifest, write_manifest


def test_a_run_directory_serves_its_adapters_on_their_base(students):
    student = students["causal"]
    servable = find_servable(student.run_dir)
    assert servable.base_model == str(student.base) and servable.kind == "causal"
    assert servable.adapters == {"a": student.adapters["a"], "b": student.adapters["b"]}
    assert servable.run_dir == student.run_dir and servable.vllm_problems() == []
    one = find_servable(student.adapters["b"])
    assert one.adapters == {"b": student.adapters["b"]} and one.run_dir is None
    t5 = find_servable(students["seq2seq"].run_dir)
    assert t5.kind == "seq2seq"
    assert any("encoder-decoder" in p for p in t5.vllm_problems())
    assert find_servable(student.base).adapters == {}  # a model directory: the base alone


def test_a_full_finetune_is_served_as_the_base(students, tmp_path):
    student = students["causal"]
    folder = tmp_path / "run" / "adapters" / "full" / "adapter"
    shutil.copytree(student.base, folder)
    manifest = read_manifest(student.adapters["a"]).to_dict()
    manifest.update(name="full", method="full", lora_config=None)
    write_manifest(folder, AdapterManifest(**manifest))
    servable = find_servable(tmp_path / "run")
    assert servable.base_model == str(folder) and servable.adapters == {}
    assert servable.name == "run"  # the run's name, not the finetune's path
    assert find_servable(folder).name == "full"  # served alone: the manifest's name
    request = Request(messages=({"role": "user", "content": "Where is order A12345?"},))
    full = LocalLM(servable.base_model, max_new_tokens=MAX_NEW).generate([request])[0]
    base = LocalLM(student.base, max_new_tokens=MAX_NEW).generate([request])[0]
    assert full.texts == base.texts  # the same weights, loaded from the finetune's directory


def test_a_plain_peft_directory_names_its_base(students, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(students["causal"].adapters["a"], plain)
    (plain / "manifest.json").unlink()
    config = json.loads((plain / "adapter_config.json").read_text())
    assert find_servable(plain).base_model == config["base_model_name_or_path"]
    assert find_servable(plain).adapters == {"plain": plain.resolve()}


def test_mixed_bases_and_empty_runs_are_refused(students, tmp_path):
    run = tmp_path / "mixed" / "adapters"
    shutil.copytree(students["causal"].adapters["a"], run / "a" / "adapter")
    shutil.copytree(students["seq2seq"].adapters["b"], run / "b" / "adapter")
    with pytest.raises(ValueError, match="different base models"):
        find_servable(tmp_path / "mixed")
    (tmp_path / "empty" / "adapters").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds no trained adapter"):
        find_servable(tmp_path / "empty")


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(list(argv))


def test_the_cli_refuses_what_it_cannot_serve(students, tmp_path, capsys):
    assert run_serve(_args(str(tmp_path / "missing"))) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run_serve(_args(str(students["seq2seq"].run_dir), "--backend", "vllm")) == 2
    assert "encoder-decoder" in capsys.readouterr().err
    args = _args(str(students["causal"].run_dir), "--port", "1234", "--api-key", "k")
    assert (args.backend, args.host, args.port, args.api_key) == ("local", "127.0.0.1", 1234, "k")


def test_model_ids_are_names_and_paths_stay_private(students, tmp_path):
    """``apprentice serve runs/demo-causal`` on a full finetune: the id is the run's name."""
    from test_server import call

    student = students["causal"]
    run = tmp_path / "demo-causal"
    folder = run / "adapters" / "multitask" / "adapter"
    shutil.copytree(student.base, folder)
    manifest = read_manifest(student.adapters["a"]).to_dict()
    manifest.update(name="multitask", method="full", lora_config=None)
    write_manifest(folder, AdapterManifest(**manifest))
    args = _args(str(run), "--port", "0", "--max-new-tokens", "4")
    servable = find_servable(run)
    server = local_server(args, servable, None, servable.run_dir).start()
    try:
        status, _, models = call(server, "GET", "/v1/models")
        assert status == 200 and [c["id"] for c in models["data"]] == ["demo-causal"]
        assert models["data"][0]["root"] == "demo-causal"
        assert models["data"][0]["max_model_len"] == 2048
        assert str(tmp_path) not in json.dumps(models)
        body = {"model": "demo-causal", "messages": [{"role": "user", "content": "hi"}]}
        status, _, reply = call(server, "POST", "/v1/chat/completions", body)
        assert status == 200 and reply["model"] == "demo-causal"
    finally:
        server.close()
    lora = find_servable(student.run_dir)
    assert lora.name == student.base.name  # a local base: its directory's name
    assert find_servable("org/some-model").name == "org/some-model"  # a hub name as it is
