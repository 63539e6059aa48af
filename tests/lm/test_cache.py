"""The SQLite cache: keys, counts, off switches, and sharing across threads and processes."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from apprentice.lm import Cache, Request, Response, ScriptedLM
from apprentice.lm.base import BaseLM
from apprentice.lm.cache import resolve_cache

SRC = str(Path(__file__).resolve().parents[2] / "src")


def ask(text: str, **sampling) -> Request:
    return Request(messages=({"role": "user", "content": text},), **sampling)


class EchoLM(BaseLM):
    """A backend that answers in-process and counts how often it was really asked."""

    backend = "echo"

    def __init__(self, model: str = "echo", **options) -> None:
        super().__init__(model, **options)
        self.asked = 0

    def _generate(self, requests):
        self.asked += len(requests)
        return [Response(texts=[r.messages[-1]["content"].upper()]) for r in requests]


def test_put_get_counts_and_stats(tmp_path):
    cache = Cache(tmp_path / "c.sqlite")
    assert cache.get("k") is None
    cache.put("k", {"texts": ["v"]})
    assert cache.get("k") == {"texts": ["v"]}
    cache.put("k", {"texts": ["w"]})  # a later answer replaces the earlier one
    assert cache.get("k") == {"texts": ["w"]}
    assert cache.stats() == {"hits": 2, "misses": 1, "entries": 1}
    assert "hits=2" in repr(cache)
    cache.clear()
    assert cache.stats() == {"hits": 0, "misses": 0, "entries": 0}


def test_entries_survive_a_new_cache_object_on_the_same_file(tmp_path):
    Cache(tmp_path / "c.sqlite").put("k", {"v": 1})
    assert Cache(tmp_path / "c.sqlite").get("k") == {"v": 1}


def test_disabled_cache_neither_reads_nor_writes_nor_counts(tmp_path):
    cache = Cache(tmp_path / "c.sqlite")
    cache.put("old", {"v": 1})
    cache.enabled = False
    cache.put("new", {"v": 2})
    assert cache.get("old") is None and cache.get("new") is None
    assert cache.stats() == {"hits": 0, "misses": 0, "entries": 1}


def test_the_key_covers_identity_and_request_but_not_meta():
    lm = EchoLM()
    key = lm.cache_key(ask("q"))
    assert key == EchoLM().cache_key(ask("q", meta="ignored"))
    different = [
        EchoLM(model="other").cache_key(ask("q")),
        EchoLM(adapter="a").cache_key(ask("q")),
        EchoLM(adapter="a", adapter_hash="h").cache_key(ask("q")),
        lm.cache_key(ask("q2")),
        lm.cache_key(ask("q", rollout=1)),
        lm.cache_key(ask("q", temperature=0.5)),
        lm.cache_key(ask("q", n=2)),
        lm.cache_key(ask("q", stop=("x",))),
    ]
    assert len({key, *different}) == 1 + len(different)
    # A different backend under the same model name is another identity.
    assert ScriptedLM(lambda s, i: "", model="echo").cache_key(ask("q")) != key


def test_an_lm_with_a_cache_asks_the_backend_once(tmp_path):
    lm = EchoLM(cache=tmp_path / "c.sqlite")
    first = lm.generate([ask("a"), ask("b")])
    second = lm.generate([ask("b"), ask("c"), ask("a")])
    assert [r.text for r in second] == ["B", "C", "A"]
    assert [r.cached for r in first + second] == [False, False, True, False, True]
    assert lm.asked == 3
    assert (lm.cache.hits, lm.cache.misses) == (2, 3)
    assert (lm.usage.calls, lm.usage.cached_calls) == (3, 2)


def test_resolve_cache_true_is_one_shared_cache_in_the_cache_dir(tmp_path):
    first, second = resolve_cache(True), resolve_cache(True)
    assert first is second
    assert first.path == tmp_path / "cache" / "lm_cache.sqlite"  # set by tests/conftest.py
    assert resolve_cache(first.path) is first
    assert resolve_cache(False) is None and resolve_cache(None) is None


def test_apprentice_cache_0_turns_off_default_and_path_caches(tmp_path, monkeypatch):
    mine = Cache(tmp_path / "mine.sqlite")
    for value in ("0", "false", "off", "NO"):
        monkeypatch.setenv("APPRENTICE_CACHE", value)
        assert resolve_cache(True) is None
        assert resolve_cache(tmp_path / "x.sqlite") is None
        assert EchoLM(cache=True).cache is None
        assert resolve_cache(mine) is mine  # an explicit Cache object is the caller's choice
    monkeypatch.setenv("APPRENTICE_CACHE", "1")
    assert resolve_cache(True) is not None


def test_bad_cache_arguments_and_paths_are_named(tmp_path):
    with pytest.raises(TypeError, match="got int 123"):
        resolve_cache(123)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match="cannot open the LM cache at .*a_file"):
        Cache(blocker / "c.sqlite")
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(OSError, match="garbage.sqlite"):
        Cache(garbage)


def test_eight_threads_share_one_cache(tmp_path):
    cache = Cache(tmp_path / "c.sqlite")
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(100):
                cache.put(f"{t}-{i}", {"t": t, "i": i})
                assert cache.get(f"{t}-{i}") == {"t": t, "i": i}
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(cache) == 800
    assert (cache.hits, cache.misses) == (800, 0)
    assert all(cache.get(f"{t}-{i}") == {"t": t, "i": i} for t in range(8) for i in range(100))


WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[3])
    from apprentice.lm.cache import Cache
    cache, tag = Cache(sys.argv[1]), sys.argv[2]
    for i in range(200):
        cache.put(f"{tag}-{i}", {"tag": tag, "i": i})
        assert cache.get(f"{tag}-{i}") == {"tag": tag, "i": i}
    print(len(cache))
    """
)


def test_two_processes_write_one_file_at_once(tmp_path):
    path = tmp_path / "shared.sqlite"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), tag, SRC],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("a", "b")
    ]
    outcomes = [w.communicate(timeout=60) for w in writers]
    assert [w.returncode for w in writers] == [0, 0], outcomes
    cache = Cache(path)
    assert len(cache) == 400
    assert all(cache.get(f"{t}-{i}") == {"tag": t, "i": i} for t in "ab" for i in range(200))


def _forked_writer(cache: Cache, tag: str, parent_connection: int) -> None:
    # SQLite forbids carrying a connection across fork: the child must open its own.
    assert id(cache._connect()) != parent_connection or tag == "p"
    for i in range(100):
        cache.put(f"{tag}-{i}", {"i": i})
        assert cache.get(f"{tag}-{i}") == {"i": i}


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_forked_children_use_their_own_connections(tmp_path):
    cache = Cache(tmp_path / "c.sqlite")
    cache.put("parent", {"i": -1})  # the parent's connection is open when it forks
    parent_connection = id(cache._connect())
    context = multiprocessing.get_context("fork")
    children = [
        context.Process(target=_forked_writer, args=(cache, t, parent_connection))
        for t in ("x", "y")
    ]
    for child in children:
        child.start()
    _forked_writer(cache, "p", parent_connection)
    for child in children:
        child.join(60)
    assert [c.exitcode for c in children] == [0, 0]
    assert len(cache) == 301
    assert cache.get("x-99") == {"i": 99} and cache.get("y-0") == {"i": 0}


def test_a_saved_lm_keeps_its_cache_file(tmp_path, monkeypatch):
    from apprentice.lm import OpenAILM
    from apprentice.lm.registry import lm_from_config

    monkeypatch.setenv("APPRENTICE_CACHE_DIR", str(tmp_path / "default"))
    custom = tmp_path / "teacher.sqlite"
    options = {"base_url": "http://127.0.0.1:9/v1"}
    cases = [
        (custom, str(custom)),  # a path: that file again, not the default cache
        (Cache(custom), str(custom)),
        (True, True),  # the default cache stays "the default", wherever it is when loaded
        (False, False),
    ]
    for cache, saved in cases:
        config = OpenAILM("m", cache=cache, **options).to_config()
        assert config["cache"] == saved
        rebuilt = lm_from_config(config, trusted=True)
        default = tmp_path / "default" / "lm_cache.sqlite"
        wanted = custom if isinstance(saved, str) else default if saved else None
        assert (rebuilt.cache.path if rebuilt.cache is not None else None) == wanted


def _overwrite_row(cache: Cache, value: str) -> None:
    (key,) = cache._connect().execute("SELECT key FROM responses").fetchone()
    cache._connect().execute("UPDATE responses SET value = ? WHERE key = ?", (value, key))


@pytest.mark.parametrize(
    ("row", "why"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "must be an object, got list"),
        ('{"texts": "abc"}', "texts must be a list of strings, got str"),
        ('{"texts": ["A", 5]}', "texts must be a list of strings"),
        ('{"usage": [1, 2]}', "texts must be a list of strings, got NoneType"),
        ('{"texts": ["A"], "usage": [-1, 2]}', "prompt_tokens must be an integer >= 0, got -1"),
        ('{"texts": ["A"], "usage": [1e999, 2]}', "prompt_tokens must be an integer >= 0, got inf"),
        ('{"texts": ["A"], "usage": 7}', "usage must be [prompt_tokens, completion_tokens]"),
        ('{"texts": ["A"], "model": 3}', "model must be a string"),
        ('{"texts": ["A"], "finish_reasons": "stop"}', "finish_reasons must be a list"),
        ('{"texts": ["A", "B"]}', "2 text(s) for n=1"),
    ],
)
def test_a_corrupted_cache_row_is_a_logged_miss_then_overwritten(tmp_path, caplog, row, why):
    lm = EchoLM(cache=tmp_path / "c.sqlite")
    lm.generate([ask("a")])
    _overwrite_row(lm.cache, row)
    with caplog.at_level("WARNING", logger="apprentice.lm.cache"):
        again = lm.generate([ask("a")])[0]
    assert again.texts == ["A"] and not again.cached and lm.asked == 2  # asked again
    assert why in caplog.text and str(lm.cache.path) in caplog.text
    assert (lm.cache.hits, lm.cache.misses) == (0, 2)
    third = lm.generate([ask("a")])[0]  # the bad row was overwritten by the fresh answer
    assert third.texts == ["A"] and third.cached and lm.asked == 2


def test_a_well_formed_row_from_an_older_version_still_reads(tmp_path):
    lm = EchoLM(cache=tmp_path / "c.sqlite")
    lm.generate([ask("a")])
    _overwrite_row(lm.cache, '{"texts": ["old"]}')
    response = lm.generate([ask("a")])[0]
    assert response.texts == ["old"] and response.cached and response.usage.prompt_tokens == 0


def test_a_cache_file_whose_table_has_another_schema_is_named_with_the_way_out(tmp_path):
    import sqlite3

    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:  # another program's (or version's) table
        conn.execute("CREATE TABLE responses (id INTEGER PRIMARY KEY, body BLOB)")
    # Before: the file opened, then every lookup raised sqlite3.OperationalError
    # ("no such column: value").
    with pytest.raises(OSError, match=r"other\.sqlite has a 'responses' table with columns") as err:
        Cache(other)
    assert "['id', 'body']" in str(err.value) and "Move the file away" in str(err.value)
    assert not isinstance(err.value, sqlite3.Error)
