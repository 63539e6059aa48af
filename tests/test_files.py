"""looks_like_local_path: one answer to "is this model name a path?" for every caller."""

from __future__ import annotations

from pathlib import Path

import pytest

from apprentice.files import looks_like_local_path
from apprentice.lm.engines import model_key as _model_key
from apprentice.serve.servable import find_servable, model_id
from apprentice.train.students import StudentError, _check_exists


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("name", "local"),
    [
        ("gpt2", False),  # a hub id of one part
        ("google/flan-t5-small", False),  # org/name
        ("./flan", True),
        ("../models/flan", True),
        (".cache", True),
        ("~/models/flan", True),
        ("~", True),
        ("/no/such/model", True),
        ("models/flan/v2", True),  # more than one "/": never a hub id
    ],
)
def test_a_name_is_local_when_it_can_only_be_a_path(cwd, name, local):
    assert looks_like_local_path(name) is local
    if str(Path(name)) == name:  # Path("./x") is "x": a Path is judged by its text too
        assert looks_like_local_path(Path(name)) is local


def test_a_hub_like_name_that_exists_here_is_local(cwd):
    assert not looks_like_local_path("gpt2")
    (cwd / "gpt2").mkdir()
    (cwd / "org" / "name").mkdir(parents=True)
    assert looks_like_local_path("gpt2") and looks_like_local_path("org/name")
    assert looks_like_local_path(cwd / "gpt2")


def test_every_caller_gives_the_same_answer(cwd):
    # A hub id: passed on as it is, never looked for on disk.
    assert model_id("org/name") == "org/name"
    assert find_servable("org/name").base_model == "org/name"
    assert _check_exists("org/name") == "org/name"
    assert _model_key("org/name") == "org/name"
    # A path that does not exist: an error naming it (never a hub download), and a
    # server id of its last part alone (an id is a name, never a path).
    missing = "models/flan/v2"
    assert model_id(missing) == "v2"
    with pytest.raises(FileNotFoundError, match="models/flan/v2"):
        find_servable(missing)
    with pytest.raises(StudentError, match="not a model directory"):
        _check_exists(missing)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _model_key(missing)
    # An existing folder under a hub-like name: the folder.
    (cwd / "org" / "name").mkdir(parents=True)
    assert model_id("org/name") == "name"
    assert _model_key("org/name") == str((cwd / "org" / "name").resolve())
