"""Loading a saved program from elsewhere: its LM settings cannot send secrets anywhere the
caller did not approve (endpoint, key variable, model downloads, cache files)."""

from __future__ import annotations

import json

import pytest
from stub_server import Reply

import apprentice as ap
from apprentice.lm.registry import UntrustedLMError, lm_from_config

SECRET_ENV = "APPRENTICE_TEST_SECRET"


def _saved(tmp_path, lm) -> str:
    qa = ap.Predict("question -> answer", lm=lm)
    qa.demos = [ap.Example(question="q", answer="a")]
    return str(qa.save(tmp_path / "program.json"))


@pytest.fixture
def foreign_file(stub, tmp_path, monkeypatch):
    """A program file naming an endpoint and a key variable the caller never chose."""
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    lm = ap.OpenAILM("m", base_url=stub.url, api_key_env=SECRET_ENV, cache=False)
    return _saved(tmp_path, lm)


def test_an_untrusted_file_cannot_pick_the_endpoint_or_the_key_variable(stub, foreign_file):
    fresh = ap.Predict("question -> answer")
    with pytest.raises(UntrustedLMError) as refused:
        fresh.load(foreign_file)
    message = str(refused.value)
    for named in ("lm.base_url", repr(stub.url), SECRET_ENV, "trusted=True", "allowed_endpoints"):
        assert named in message
    # Refused before anything changed or was contacted.
    assert fresh.lm is None and fresh.demos == []
    assert stub.seen == []

    # Approving another key variable for that endpoint does not approve this one.
    with pytest.raises(UntrustedLMError):
        fresh.load(foreign_file, allowed_endpoints={stub.url: "OPENAI_API_KEY"})


@pytest.mark.parametrize("how", ["trusted", "allowed"])
def test_a_trusted_file_or_an_approved_endpoint_loads(stub, foreign_file, how):
    stub.queue(Reply(texts="[[answer]]\n42"))
    options = (
        {"trusted": True}
        if how == "trusted"
        else {"allowed_endpoints": {stub.url + "/": SECRET_ENV}}
    )
    loaded = ap.Predict("question -> answer").load(foreign_file, **options)
    assert loaded.lm.base_url == stub.url and len(loaded.demos) == 1
    loaded(question="q")
    loaded.lm.close()
    # What the check guards: the file's key variable went to the file's host.
    assert stub.seen[0].headers["authorization"] == "Bearer s3cret"


def test_a_file_that_names_no_endpoint_uses_the_callers_defaults(stub, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", stub.url)
    path = tmp_path / "p.json"
    state = ap.Predict("question -> answer").dump_state()
    state["predictors"]["self"]["lm"] = {"backend": "openai", "model": "m", "cache": False}
    path.write_text(json.dumps(state))
    loaded = ap.Predict("question -> answer").load(path)
    assert loaded.lm.base_url == stub.url and loaded.lm.api_key_env == "OPENAI_API_KEY"


def test_keys_and_cache_files_in_a_saved_config_are_refused():
    config = {"backend": "openai", "model": "m", "api_key": "sk-theirs"}
    with pytest.raises(ValueError, match="holds an api_key"):
        lm_from_config(config, trusted=True)
    config = {"backend": "openai", "model": "m", "cache": "/somewhere/else.sqlite"}
    with pytest.raises(UntrustedLMError, match="lm.cache '/somewhere/else.sqlite'"):
        lm_from_config(config)


def test_a_local_binding_may_only_name_a_model_on_this_machine(tmp_path):
    config = {"backend": "local", "model": "some-org/some-model", "adapter": None}
    with pytest.raises(UntrustedLMError, match="lm.model 'some-org/some-model'") as refused:
        lm_from_config(config)
    assert "Hugging Face Hub" in str(refused.value) and "trusted=True" in str(refused.value)
