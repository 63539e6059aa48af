"""Runtime adapter loads are atomic and confined: a load that fails leaves the engine serving
exactly what it served before, and the weights loaded (and reported) are the ones checked."""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest
from serve_helpers import MAX_NEW, misfit_adapter
from test_server import QUESTIONS, ask, call

from apprentice.lm.local import LocalLM
from apprentice.lm.local_adapters import AdapterLoadError
from apprentice.train.export import adapter_hash

MISFITS = ["shape", "extra", "missing", "targets"]


def answers(server) -> dict:
    """Greedy answers of the base and every served adapter, over HTTP."""
    served = [c["id"] for c in call(server, "GET", "/v1/models")[2]["data"]]
    result = {}
    for model in served:
        body = {"model": model, "messages": list(ask(QUESTIONS[0]).messages)}
        status, _, reply = call(server, "POST", "/v1/chat/completions", body)
        assert status == 200, reply
        result[model] = reply["choices"][0]["message"]["content"]
    return result


def footprint(lm) -> tuple:
    model = lm.engine.network
    parameters = sum(p.numel() for p in model.parameters())
    return parameters, sorted(getattr(model, "peft_config", {}))


@pytest.fixture
def misfits(students):
    run_dir = students["causal"].run_dir
    made = {
        how: misfit_adapter(students["causal"].adapters["b"], run_dir / "misfit" / how, how)
        for how in MISFITS
    }
    yield made
    shutil.rmtree(run_dir / "misfit")


@pytest.mark.parametrize("how", MISFITS)
def test_a_failed_load_leaves_the_server_as_it_was(serve, misfits, how):
    server = serve()
    before, held = answers(server), footprint(server.lm)
    path = f"misfit/{how}"
    for body in (
        {"lora_name": "new", "lora_path": path},
        {"lora_name": "a", "lora_path": path, "load_inplace": True},  # replacing a live one
    ):
        status, _, reply = call(server, "POST", "/v1/load_lora_adapter", body)
        assert status == 400, reply
        assert "does not fit this model" in reply["error"]["message"]
        assert answers(server) == before  # base, a and b answer as before
        assert footprint(server.lm) == held  # no parameter and no peft entry left behind
    good = {"lora_name": "new", "lora_path": "adapters/b/adapter"}
    assert call(server, "POST", "/v1/load_lora_adapter", good)[0] == 200  # the name is free
    again = {"lora_name": "a", "lora_path": "adapters/b/adapter", "load_inplace": True}
    assert call(server, "POST", "/v1/load_lora_adapter", again)[0] == 200
    after = answers(server)
    assert after["new"] == after["a"] == before["b"]
    call(server, "POST", "/v1/unload_lora_adapter", {"lora_name": "new"})
    restore = {"lora_name": "a", "lora_path": "adapters/a/adapter", "load_inplace": True}
    assert call(server, "POST", "/v1/load_lora_adapter", restore)[0] == 200


@pytest.mark.parametrize("how", ["shape", "targets"])
def test_a_failed_first_load_leaves_the_plain_base_model(students, misfits, how):
    lm = LocalLM(students["causal"].base, dtype="float64", max_new_tokens=MAX_NEW)  # own engine
    plain = type(lm.engine.network)
    before = lm.generate([ask(QUESTIONS[1])])[0].text
    parameters = sum(p.numel() for p in lm.engine.network.parameters())
    with pytest.raises(AdapterLoadError):
        lm.load_adapter("first", misfits[how])
    assert type(lm.engine.network) is plain and lm.adapter_names() == []
    assert sum(p.numel() for p in lm.engine.network.parameters()) == parameters
    assert lm.generate([ask(QUESTIONS[1])])[0].text == before
    lm.load_adapter("first", students["causal"].adapters["a"])  # and a good one loads
    assert lm.with_adapter("first").generate([ask(QUESTIONS[1])])[0].text != before
    lm.unload_adapter("first")


def test_a_folder_swapped_after_its_check_cannot_change_what_is_loaded(serve, students, tmp_path):
    """The load waits for the engine (a batch is running) after its path was checked; the
    folder is swapped for a symlink to other weights outside the root meanwhile."""
    server = serve()
    student = students["causal"]
    inside = student.run_dir / "swapped"
    shutil.copytree(student.adapters["a"], inside)
    outside = tmp_path / "outside"
    shutil.copytree(student.adapters["b"], outside)
    engine = server.lm.engine
    reply: dict = {}
    try:
        with engine._lock:  # what a long generate call does
            loader = threading.Thread(
                target=lambda: reply.update(
                    result=call(
                        server,
                        "POST",
                        "/v1/load_lora_adapter",
                        {"lora_name": "s", "lora_path": "swapped"},
                    )
                )
            )
            loader.start()
            time.sleep(1.0)  # the request is checked and waits for the lock (any delay will do)
            shutil.rmtree(inside)
            os.symlink(outside, inside)
        loader.join(60)
        status = reply["result"][0]
        models = {c["id"]: c for c in call(server, "GET", "/v1/models")[2]["data"]}
        if status == 200:  # loaded what was checked, and says so
            assert models["s"]["adapter_hash"] == adapter_hash(student.adapters["a"])
            served = answers(server)
            assert served["s"] == served["a"] != served["b"]
        else:
            assert status == 400 and "s" not in models
    finally:
        if "s" in server.lm.adapter_names():
            server.lm.unload_adapter("s")
        inside.unlink() if inside.is_symlink() else shutil.rmtree(inside, ignore_errors=True)


def test_a_directory_swapped_between_resolve_and_open_is_refused(students, tmp_path, monkeypatch):
    from apprentice.lm import adapter_files

    student = students["causal"]
    root = tmp_path / "root"
    inside = root / "adapter"
    shutil.copytree(student.adapters["a"], inside)
    outside = tmp_path / "outside"
    shutil.copytree(student.adapters["b"], outside)
    real_open = os.open
    swapped = []

    def swap_then_open(path, flags, *args, **kwargs):
        if str(path) == str(inside) and not swapped:
            swapped.append(path)  # once: rmtree opens files too
            shutil.rmtree(inside)
            os.symlink(outside, inside)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(adapter_files.os, "open", swap_then_open)
    with pytest.raises(adapter_files.OutsideRootError):
        adapter_files.read_adapter("adapter", root=root.resolve())
    assert swapped  # the swap happened after the path was resolved and checked


def test_the_reported_hash_is_that_of_the_bytes_loaded(students):
    from apprentice.lm.adapter_files import read_adapter

    for folder in students["causal"].adapters.values():
        assert read_adapter(folder).hash == adapter_hash(folder)


@pytest.mark.parametrize("name", ["\ud800x", "tab\tname", "line\nname", " padded", "", "x" * 257])
def test_adapter_names_are_short_printable_strings(local_lm, students, name):
    lm = local_lm()
    with pytest.raises(ValueError, match="printable"):
        lm.load_adapter(name, students["causal"].adapters["a"])
    assert lm.adapter_names() == ["a", "b"]


def test_a_request_whose_adapter_is_unloaded_while_it_waits_is_a_404(serve, students):
    server = serve()
    path = {"lora_name": "brief", "lora_path": "adapters/b/adapter"}
    assert call(server, "POST", "/v1/load_lora_adapter", path)[0] == 200
    reply: dict = {}
    body = {"model": "brief", "messages": list(ask(QUESTIONS[0]).messages)}
    asking = threading.Thread(
        target=lambda: reply.update(r=call(server, "POST", "/v1/chat/completions", body))
    )
    with server.lm.engine._lock:  # a batch is running: the request waits in the queue
        asking.start()
        time.sleep(1.0)  # it is queued by now (any delay will do: it cannot run yet)
        server.lm.unload_adapter("brief")
    asking.join(60)
    status, _, error = reply["r"]
    assert status == 404 and "`brief` does not exist" in error["error"]["message"]


@pytest.mark.parametrize("fifo", ["adapter_config.json", "adapter_model.safetensors"])
def test_a_fifo_in_an_adapter_is_refused_without_blocking(serve, students, fifo):
    """Opening a FIFO for reading waits for a writer: a load would hold its thread forever."""
    student = students["causal"]
    folder = student.run_dir / "adapters" / f"fifo-{fifo}"
    shutil.copytree(student.adapters["a"], folder)
    (folder / fifo).unlink()
    os.mkfifo(folder / fifo)
    try:
        server = serve()
        outcome: list = []
        body = {"lora_name": "piped", "lora_path": str(folder.relative_to(student.run_dir))}
        loader = threading.Thread(
            target=lambda: outcome.append(call(server, "POST", "/v1/load_lora_adapter", body)),
            daemon=True,
        )
        loader.start()
        loader.join(30)  # far above the milliseconds a refusal takes
        hung = loader.is_alive()
        if hung:  # free the stuck reader before failing
            os.close(os.open(folder / fifo, os.O_WRONLY | os.O_NONBLOCK))
            loader.join(30)
        assert not hung, "the load waited on the FIFO"
        status, _, reply = outcome[0]
        assert status == 400 and f"{fifo} is not a regular file" in reply["error"]["message"]
        assert "piped" not in server.lm.adapter_names()
    finally:
        shutil.rmtree(folder)
