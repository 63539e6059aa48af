"""Tracing switched on by a command: a recipe's ``tracing`` section or ``--trace EXPORTER``,
through the real ``apprentice`` entry point; spans read back from the jsonl file, or from a
real OTLP/HTTP exporter posting to a collector on a local socket."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from apprentice.cli import main
from apprentice.settings import current_tracer
from tiny_run import RECIPE as DEMO
from tiny_run import ROOT
from tiny_run import SHORT as TINY_SHORT

pytest.importorskip("opentelemetry.sdk")

SMALL = ["data.train.args.n=3", "bootstrap.concurrency=2"]
# The demo shrunk to seconds (tiny_run), for a whole distill
SHORT = [*TINY_SHORT, "eval.num_threads=2"]


def _recipe(tmp_path: Path, tracing: str) -> Path:
    """The demo recipe with a tracing section (YAML flow text) added."""
    path = tmp_path / "traced.yaml"
    path.write_text(DEMO.read_text() + f"tracing: {tracing}\n")
    return path


def _sets(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def _spans(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _runs(spans: list[dict]) -> list[list[dict]]:
    """The spans of each program run (one trace each), checked to be one tree: a program
    span at the root, every other span's parent in the same trace."""
    by_trace = defaultdict(list)
    for span in spans:
        by_trace[span["context"]["trace_id"]].append(span)
    for trace in by_trace.values():
        ids = {s["context"]["span_id"] for s in trace}
        roots = [s for s in trace if s["parent_id"] is None]
        assert [r["name"] for r in roots] == ["program TicketTriage"]
        assert all(s["parent_id"] in ids for s in trace if s["parent_id"] is not None)
    return list(by_trace.values())


@pytest.mark.slow
def test_a_recipe_tracing_section_writes_a_span_for_every_run_module_and_lm_call(tmp_path, capsys):
    recipe = _recipe(tmp_path, "{exporter: jsonl}")
    root = tmp_path / "run"
    assert main(["distill", str(recipe), "--run-dir", str(root), *_sets(SHORT), "-q"]) == 0
    assert current_tracer() is None  # switched off again when the command ended

    spans = _spans(root / "spans.jsonl")  # the run directory's, by default
    runs = _runs(spans)
    # bootstrap: 8 teacher runs; eval: the teacher, untrained and trained student on 2 each
    assert len(runs) == 8 + 3 * 2
    by_id = {s["context"]["span_id"]: s for s in spans}
    models = Counter()
    for span in spans:
        attributes = span["attributes"]
        if span["name"].startswith("chat "):
            parent = by_id[span["parent_id"]]
            assert parent["attributes"]["apprentice.kind"] == "predictor"
            models[(attributes["gen_ai.provider.name"], attributes["gen_ai.request.model"])] += 1
            assert attributes["gen_ai.usage.input_tokens"] > 0
            assert json.loads(attributes["apprentice.messages"])[-1]["role"] == "user"
        elif attributes["apprentice.kind"] == "predictor":
            assert span["name"] == f"predictor {attributes['apprentice.predictor']}"
            assert attributes["apprentice.predictor"] in ("classify", "extract")
            assert "ticket" in json.loads(attributes["apprentice.inputs"])
        else:
            assert attributes["apprentice.kind"] == "program"
            assert attributes["apprentice.module"] == "TicketTriage"
        assert span["resource"]["attributes"]["service.name"] == "apprentice"
    # The teacher answers both predictors of its 10 runs; each student run gets as far as
    # its first predictor's reply at least.
    assert models[("scripted", "scripted")] == 20
    assert models[("local", str(root / "student"))] >= 2
    trained = [m for m in models if m[1].startswith(str(root / "adapters"))]
    assert trained and sum(models[m] for m in trained) >= 2
    teacher_calls = [s for s in spans if s["attributes"].get("gen_ai.provider.name") == "scripted"]
    assert all(s["attributes"]["apprentice.cost_usd"] > 0 for s in teacher_calls[:8])

    # The saved program, scored on a data file: --trace jsonl writes into --out DIR.
    data = tmp_path / "dev.jsonl"
    data.write_text(
        '{"ticket": "I was charged twice for order A12345.", "category": "billing", '
        '"order_id": "A12345"}\n'
    )
    out = tmp_path / "eval"
    program = ["eval", str(root / "program.json"), "--program", "recipes.demo.task:TicketTriage"]
    common = ["--data", str(data), "--metric", "recipes.demo.task:metric", "-q"]
    assert main([*program, *common, "--trace", "jsonl", "--out", str(out)]) == 0
    capsys.readouterr()
    (run,) = _runs(_spans(out / "spans.jsonl"))
    chats = [s for s in run if s["name"].startswith("chat ")]
    assert chats and all(s["attributes"]["gen_ai.provider.name"] == "local" for s in chats)
    assert current_tracer() is None


def test_tracing_is_off_by_default_and_imports_nothing(tmp_path):
    code = (
        "import sys\n"
        "from apprentice.cli import main\n"
        f"args = ['bootstrap', {str(DEMO)!r}, '--run-dir', {str(tmp_path / 'run')!r}, '-q']\n"
        f"assert main(args + {_sets(SMALL)!r}) == 0\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert not (tmp_path / "run" / "spans.jsonl").exists()


def test_a_bad_tracing_setting_is_refused_naming_the_value_and_the_choices(tmp_path, capsys):
    def error(args: list[str]) -> str:
        assert main(args) == 1
        return capsys.readouterr().err

    run = ["--run-dir", str(tmp_path / "run"), *_sets(SMALL), "-q"]
    err = error(["bootstrap", str(_recipe(tmp_path, "{exporter: zipkin}")), *run])
    assert "tracing.exporter" in err and "'zipkin'" in err
    assert "'otlp', 'jsonl', 'console' or 'none'" in err
    err = error(["bootstrap", str(_recipe(tmp_path, "{exporter: jsonl, paht: s.jsonl}")), *run])
    assert "unknown key 'tracing.paht'; did you mean 'path'?" in err
    err = error(["eval", str(_recipe(tmp_path, "{exporter: otlp, path: s.jsonl}")), *run])
    assert "path is for the jsonl exporter, not 'otlp'" in err
    err = error(["bootstrap", str(DEMO), *run, "--set", "tracing.endpoint=http://localhost:4318"])
    assert "missing required key 'tracing.exporter'" in err
    err = error(["bootstrap", str(DEMO), *run, "--trace", "otlp", "--trace-endpoint", "host:1"])
    assert "--trace: 'host:1' is not an http(s) URL" in err
    err = error(["bootstrap", str(DEMO), *run, "--trace-path", "s.jsonl"])
    assert "--trace-path needs --trace EXPORTER" in err
    program_file = ["eval", str(tmp_path / "program.json"), "--data", "d.jsonl", "--metric", "m:f"]
    err = error([*program_file, "--trace", "jsonl"])
    assert "the jsonl exporter needs a file for its spans: give --trace-path FILE" in err
    assert not (tmp_path / "run" / "traces" / "traces.jsonl").exists()  # nothing ran

    with pytest.raises(SystemExit):
        main(["bootstrap", str(DEMO), "--trace", "zipkin"])
    err = capsys.readouterr().err
    assert "argument --trace: invalid choice: 'zipkin'" in err
    assert all(name in err.partition("choose from")[2] for name in ("otlp", "jsonl", "console"))


def test_a_missing_exporter_package_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    args = ["bootstrap", str(DEMO), "--run-dir", str(tmp_path / "run"), "-q", "--trace", "otlp"]
    assert main([*args, *_sets(SMALL)]) == 1
    err = capsys.readouterr().err
    assert (
        "opentelemetry-exporter-otlp-proto-http package: pip install 'apprentice[tracing]'" in err
    )
    assert current_tracer() is None


class _Collector(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.posts.append((self.path, self.headers["Content-Type"], body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def collector(monkeypatch):
    """An OTLP/HTTP collector on this machine: it keeps what is posted and answers 200."""
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    server.posts = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def _posted_spans(posts) -> list[tuple[str, str]]:
    """(service.name, span name) of every span the collector received, protobuf decoded."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    found = []
    for path, content_type, body in posts:
        assert (path, content_type) == ("/v1/traces", "application/x-protobuf")
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                found += [(attributes["service.name"], span.name) for span in scope.spans]
    return found


def test_the_otlp_exporter_posts_the_spans_to_a_collector(tmp_path, capsys, monkeypatch, collector):
    url = f"http://127.0.0.1:{collector.server_address[1]}"
    # The flag wins over the recipe's section: otlp to the collector, no jsonl file.
    recipe = _recipe(tmp_path, "{exporter: jsonl, service_name: triage}")
    root = tmp_path / "run"
    args = ["bootstrap", str(recipe), "--run-dir", str(root), *_sets(SMALL), "-q"]
    assert main([*args, "--trace", "otlp", "--trace-endpoint", url]) == 0
    names = Counter(_posted_spans(collector.posts))
    assert names[("triage", "program TicketTriage")] == 3
    assert names[("triage", "predictor extract")] == 3
    assert names[("triage", "chat scripted")] == 6
    assert not (root / "spans.jsonl").exists()

    # A recipe's otlp section without an endpoint: OpenTelemetry's environment variable.
    collector.posts.clear()
    capsys.readouterr()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    again = ["bootstrap", str(_recipe(tmp_path, "{exporter: otlp}")), "-q"]
    assert main([*again, "--run-dir", str(tmp_path / "run2"), *_sets(SMALL)]) == 0
    names = Counter(_posted_spans(collector.posts))
    assert names[("apprentice", "program TicketTriage")] == 3
