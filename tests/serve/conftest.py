"""Fixtures of the serve tests: the students are built once per session."""

from __future__ import annotations

import pytest
from serve_helpers import MAX_NEW, Student, build_student


@pytest.fixture(scope="session")
def students(tmp_path_factory) -> dict[str, Student]:
    root = tmp_path_factory.mktemp("serve-students")
    return {kind: build_student(kind, root) for kind in ("causal", "seq2seq")}


@pytest.fixture
def local_lm(students):
    """``local_lm(kind)``: a LocalLM on the student with adapters a and b loaded."""
    from apprentice.lm.local import LocalLM

    def make(kind: str = "causal", **options) -> LocalLM:
        student = students[kind]
        return LocalLM(student.base, adapters=student.adapters, max_new_tokens=MAX_NEW, **options)

    return make


@pytest.fixture
def serve(local_lm, students):
    """``serve(kind, **server_options)``: a started Server, closed after the test."""
    from apprentice.serve.server import Server

    started = []

    def make(kind: str = "causal", **options) -> Server:
        options.setdefault("adapter_root", students[kind].run_dir)
        server = Server(local_lm(kind, batch_wait_ms=10), **options).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.close()
