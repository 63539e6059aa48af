"""What ``apprentice serve TARGET`` finds to serve: run directories, one adapter, a full
finetune, a plain PEFT directory; the CLI's refusals; and how it loads the base: as the
adapters' manifests say, unless its command line says otherwise."""

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
from trained_base import HUB_NAME, REVISION, adapter_trained_with


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


# -- the base loads as the adapters trained (their manifests' base_model_options) -----------------
def _run_trained_with(student, root, options: dict, base_model: str | None = None):
    """A run directory of the student's adapters a and b, whose manifests say the base
    (``base_model``, default the student's folder) trained loaded with ``options``."""
    for name, folder in student.adapters.items():
        adapter_trained_with(
            folder,
            root / "adapters" / name / "adapter",
            options,
            base_model=base_model or str(student.base),
            name=name,
        )
    return root


def test_the_local_server_loads_the_base_as_the_run_trained(students, tmp_path):
    import torch

    run = _run_trained_with(students["causal"], tmp_path / "run", {"dtype": "bfloat16"})
    servable = find_servable(run)
    for argv, dtype in (((), torch.bfloat16), (("--dtype", "float32"), torch.float32)):
        server = local_server(_args(str(run), "--port", "0", *argv), servable, None, run)
        try:
            assert server.lm.engine.network.get_base_model().dtype == dtype
        finally:
            server.close()


def test_the_vllm_command_line_loads_the_base_as_the_run_trained(students, tmp_path, monkeypatch):
    """The argv of the supervised ``vllm serve`` (nothing is started): the manifests'
    revision and dtype, unless the command line sets them."""
    from apprentice.serve.vllm_backend import vllm_server

    monkeypatch.setattr("apprentice.serve.vllm_server._cpu_build", lambda: False)
    trained = {"dtype": "bfloat16", "revision": REVISION}
    run = _run_trained_with(students["causal"], tmp_path / "run", trained, base_model=HUB_NAME)
    servable = find_servable(run)
    argv = vllm_server(_args(str(run)), servable, "k").argv()
    assert argv[argv.index("serve") - 2 : argv.index("serve") + 2] == [
        "-m",
        "apprentice.serve.vllm_launcher",
        "serve",
        HUB_NAME,
    ]
    assert _flag(argv, "--revision") == REVISION and _flag(argv, "--dtype") == "bfloat16"
    assert "--trust-remote-code" not in argv and "--quantization" not in argv
    mine = vllm_server(
        _args(str(run), "--dtype", "float16", "--revision", "v2"), servable, "k"
    ).argv()
    assert _flag(mine, "--revision") == "v2" and _flag(mine, "--dtype") == "float16"


def test_vllm_serve_asks_for_remote_code_and_says_when_4bit_cannot_load(
    students, tmp_path, monkeypatch, caplog
):
    from apprentice.lm import vllm
    from apprentice.serve.vllm_backend import vllm_server

    monkeypatch.setattr("apprentice.serve.vllm_server._cpu_build", lambda: False)
    remote = _run_trained_with(students["causal"], tmp_path / "remote", {"trust_remote_code": True})
    with pytest.raises(PermissionError, match="trust_remote_code.*--trust-remote-code"):
        vllm_server(_args(str(remote)), find_servable(remote), "k")
    trusted = vllm_server(_args(str(remote), "--trust-remote-code"), find_servable(remote), "k")
    assert "--trust-remote-code" in trusted.argv()
    # 4-bit: vLLM 0.32 has no bitsandbytes (and its CPU build no 4-bit layers at all)
    no_bnb = "the installed vLLM (vllm 0.32.0) has no bitsandbytes quantization"
    monkeypatch.setattr(vllm, "vllm_4bit_problem", lambda: no_bnb)
    qlora = _run_trained_with(students["causal"], tmp_path / "qlora", {"load_in_4bit": True})
    with caplog.at_level("WARNING", logger="apprentice.student_loading"):
        argv = vllm_server(_args(str(qlora)), find_servable(qlora), "k").argv()
    assert "--quantization" not in argv and no_bnb in caplog.text
    with pytest.raises(ValueError, match="load_in_4bit is set.*no bitsandbytes"):
        vllm_server(_args(str(qlora), "--load-in-4bit"), find_servable(qlora), "k")
    # where vLLM can, it is asked for
    monkeypatch.setattr(vllm, "vllm_4bit_problem", lambda: None)
    argv = vllm_server(_args(str(qlora)), find_servable(qlora), "k").argv()
    assert _flag(argv, "--quantization") == "bitsandbytes"


def test_the_cli_names_a_manifests_remote_code_in_one_line(students, tmp_path, capsys):
    remote = _run_trained_with(students["causal"], tmp_path / "remote", {"trust_remote_code": True})
    assert run_serve(_args(str(remote), "--port", "0")) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("apprentice serve: adapter 'a', adapter 'b' trained with")
    assert "--trust-remote-code" in line


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]
