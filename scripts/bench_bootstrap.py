"""Bootstrap throughput: 64 runs in flight against a stub that answers after 100 ms.

    .venv/bin/python scripts/bench_bootstrap.py [--calls 2000] [--rounds 3] [--json OUT]

With ``--in-flight`` requests in flight and every reply taking ``--delay`` seconds, the
ideal is in_flight / delay calls/s (640 by default). The stub is an asyncio server in
its own process (a minimal HTTP/1.1 keep-alive parser, no dependencies), so it neither
shares a GIL with the clients nor limits them. Each client runs in a fresh interpreter,
makes ``--warmup`` untimed calls (connections opened), then ``--calls`` timed ones:

  raw-httpx         a pool of 64 threads sharing one httpx.Client, posting the exact
                    JSON body our Predict sends (the ceiling check: no framework at all)
  raw-stdlib        the same with one http.client connection per thread (no httpx)
  ours              ap.bootstrap_traces(ap.Predict("question -> answer"), ...,
                    concurrency=64) on ap.OpenAILM(..., concurrency=64, cache=False),
                    with a metric, into a TraceStore on disk
  dspy-bootstrap    DSPy's own trace bootstrapping (dspy.teleprompt.bootstrap_trace.
                    bootstrap_trace_data: Evaluate underneath, as BootstrapFinetune uses
                    it) with num_threads=64, dspy.LM(cache=False), DSPy caches off
  dspy-evaluate     dspy.Evaluate(num_threads=64, display_progress=False), same LM
  ours-httpx, ours-httpx-per-thread
                    (only with --diagnose) ours over httpx instead of its own transport
                    (one http.client connection per thread): one shared httpx pool (the
                    fallback OpenAILM uses behind a proxy, and its only transport before),
                    or one single-connection httpx.Client per thread (what-ifs that set
                    private attributes, not supported configurations)

The rounds run interleaved; each figure is the median over rounds. Exits non-zero when
ours reaches less than 90% of the ideal. This file is also the stub (``--stub``) and
every client (``--worker NAME``); the top level imports only the standard library, so
DSPy's venv can run it too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DSPY_VENVS = (ROOT / ".bench-venvs" / "dspy", ROOT / ".bench-venvs" / "dspy-boot")
CLIENTS = (
    "raw-httpx",
    "raw-stdlib",
    "ours",
    "ours-httpx",
    "ours-httpx-per-thread",
    "dspy-bootstrap",
    "dspy-evaluate",
)
BAR = 0.90


# -- the stub server ---------------------------------------------------------------------
def serve_stub(delay: float) -> None:
    """Answers every POST after ``delay`` s; ``GET /stats`` returns and resets its counters.
    Prints its port on stdout, then serves forever."""
    stats = {"requests": 0, "connections": 0, "in_flight": 0, "max_in_flight": 0}

    def completion(body: bytes) -> bytes:
        request = json.loads(body)
        system = request["messages"][0]["content"]
        if "[[ ##" in system:  # DSPy's ChatAdapter
            text = "[[ ## answer ## ]]\nParis\n\n[[ ## completed ## ]]"
        else:
            text = "[[answer]]\nParis"
        return json.dumps(
            {
                "id": "chatcmpl-stub",
                "object": "chat.completion",
                "created": 1700000000,
                "model": request.get("model", "stub-model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 50, "completion_tokens": 5, "total_tokens": 55},
            }
        ).encode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats["connections"] += 1
        try:
            while True:  # one request after another on a keep-alive connection
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length") or 0))
                if request_line.startswith("GET /stats"):
                    payload = json.dumps({**stats, "cpu_s": time.process_time()}).encode()
                    stats.update(requests=0, connections=0, max_in_flight=0)
                else:
                    stats["requests"] += 1
                    stats["in_flight"] += 1
                    stats["max_in_flight"] = max(stats["max_in_flight"], stats["in_flight"])
                    try:
                        await asyncio.sleep(delay)
                        payload = completion(body)
                    finally:
                        stats["in_flight"] -= 1
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed its connection
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def stub_stats(base_url: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(base_url.rsplit("/v1", 1)[0] + "/stats") as reply:
        return json.loads(reply.read())


# -- the clients (each runs in a fresh interpreter) ------------------------------------------
def question(i: int) -> str:
    return f"What is the capital of France? (call {i})"


def chat_bodies(base_url: str, n: int) -> list[dict]:
    """The exact JSON bodies our Predict sends, built before any clock starts."""
    import apprentice as ap

    lm = ap.OpenAILM("stub-model", base_url=base_url, api_key="x", cache=False)
    signature, fmt = ap.ensure_signature("question -> answer"), ap.ChatFormat()
    return [
        lm.body(ap.Request(messages=tuple(fmt.render(signature, [], {"question": question(i)}))))
        for i in range(n)
    ]


def thread_local_stdlib_post(base_url: str, timeout: float = 60.0):
    """post(body) -> (status, headers, content) over this thread's own http.client connection."""
    import http.client
    import urllib.parse

    parts = urllib.parse.urlsplit(base_url)
    path = parts.path + "/chat/completions"
    headers = {"Content-Type": "application/json", "Authorization": "Bearer x"}
    local = threading.local()

    def post(body: dict):
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout)
        conn.request("POST", path, json.dumps(body).encode(), headers)
        reply = conn.getresponse()
        return reply.status, reply.headers, reply.read()

    return post


def thread_local_httpx_post(base_url: str, timeout: float = 60.0):
    """post(data) -> (status, headers, content) over this thread's own one-connection
    httpx.Client (``verify=False``: plain HTTP here, and no CA bundle loaded per client)."""
    import httpx

    url = base_url + "/chat/completions"
    headers = {"Authorization": "Bearer x", "Content-Type": "application/json"}
    local = threading.local()

    def post(data: bytes):
        client = getattr(local, "client", None)
        if client is None:
            limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
            client = local.client = httpx.Client(
                headers=headers, timeout=timeout, limits=limits, verify=False
            )
        reply = client.post(url, content=data)
        return reply.status_code, reply.headers, reply.content

    return post


def run_raw(name: str, base_url: str, calls: int, warmup: int, threads: int) -> dict:
    bodies = chat_bodies(base_url, warmup + calls)
    versions = {}
    if name == "raw-httpx":
        import httpx

        limits = httpx.Limits(max_connections=threads, max_keepalive_connections=threads)
        client = httpx.Client(headers={"Authorization": "Bearer x"}, timeout=60.0, limits=limits)
        url = base_url + "/chat/completions"

        def post(body: dict):
            reply = client.post(url, json=body)
            return reply.status_code, reply.headers, reply.content

        versions["httpx"] = httpx.__version__
    else:
        post = thread_local_stdlib_post(base_url)
        versions["http.client"] = f"stdlib (python {platform.python_version()})"

    def drain(work: list[dict]) -> None:
        lock, answers, expected = threading.Lock(), [], len(work)

        def loop() -> None:
            while True:
                with lock:
                    if not work:
                        return
                    body = work.pop()
                status, _, content = post(body)
                if status != 200:
                    raise RuntimeError(f"HTTP {status}: {content[:200]!r}")
                answers.append(json.loads(content)["choices"][0]["message"]["content"])

        pool = [threading.Thread(target=loop) for _ in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        if len(answers) != expected or not all(a.endswith("Paris") for a in answers):
            raise SystemExit(f"{name}: {len(answers)} of {expected} calls answered 'Paris'")

    drain(bodies[:warmup])
    start = time.perf_counter()
    drain(bodies[warmup:])
    return {"elapsed_s": time.perf_counter() - start, "ok": calls, "versions": versions}


def run_ours(name: str, base_url: str, calls: int, warmup: int, threads: int) -> dict:
    import httpx

    import apprentice as ap
    from apprentice.traces import TraceStore, bootstrap_traces

    lm = ap.OpenAILM("stub-model", base_url=base_url, api_key="x", concurrency=threads, cache=False)
    if name == "ours-httpx":  # a what-if: the httpx fallback (one shared pool) for every call
        lm._transport = "httpx"
    elif name == "ours-httpx-per-thread":  # a what-if: one httpx.Client per thread
        post = thread_local_httpx_post(base_url, lm.timeout)

        def per_thread_post(data: bytes):
            with lm._gate:
                start = time.perf_counter()
                status, headers, content = post(data)
                return lm._reply(status, headers, content, time.perf_counter() - start)

        lm._post = per_thread_post
    program = ap.Predict("question -> answer")

    def examples(first: int, n: int) -> list:
        return [
            ap.Example(id=f"q{i}", question=question(i), answer="Paris").with_inputs("question")
            for i in range(first, first + n)
        ]

    def metric(example, prediction, trace=None) -> bool:
        return prediction.answer == example.answer

    options = {"teacher": lm, "metric": metric, "concurrency": threads, "progress": False}
    bootstrap_traces(program, examples(0, warmup), **options)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = bootstrap_traces(program, examples(warmup, calls), store=tmp, **options)
        elapsed = time.perf_counter() - start
        stored = len(TraceStore(tmp))
    if result.kept != calls or stored != calls:
        raise SystemExit(
            f"ours: kept {result.kept}, stored {stored} of {calls}: {result.summary()}"
        )
    return {
        "elapsed_s": elapsed,
        "ok": result.kept,
        "versions": {
            "apprentice": ap.__version__,
            "transport": lm.transport,
            "httpx": httpx.__version__,
        },
    }


def run_dspy(name: str, base_url: str, calls: int, warmup: int, threads: int) -> dict:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network fetch
    import importlib.metadata

    import dspy

    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    lm = dspy.LM(
        "openai/stub-model",
        api_base=base_url,
        api_key="x",
        cache=False,
        temperature=0.0,
        max_tokens=1024,
    )
    dspy.configure(lm=lm)
    program = dspy.Predict("question -> answer")

    def examples(first: int, n: int) -> list:
        return [
            dspy.Example(question=question(i), answer="Paris").with_inputs("question")
            for i in range(first, first + n)
        ]

    def metric(example, prediction, trace=None) -> bool:
        return prediction.answer == example.answer

    def run(devset: list) -> int:
        if name == "dspy-bootstrap":
            from dspy.teleprompt.bootstrap_trace import bootstrap_trace_data

            data = bootstrap_trace_data(program, devset, metric, num_threads=threads)
            return sum(bool(d["score"]) for d in data)
        evaluate = dspy.Evaluate(
            devset=devset, metric=metric, num_threads=threads, display_progress=False
        )
        result = evaluate(program)
        return sum(bool(score) for _, _, score in result.results)

    run(examples(0, warmup))
    start = time.perf_counter()
    ok = run(examples(warmup, calls))
    elapsed = time.perf_counter() - start
    if ok != calls:
        raise SystemExit(f"{name}: {ok} of {calls} calls scored")
    versions = {}
    for package in ("dspy", "litellm", "httpx"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return {"elapsed_s": elapsed, "ok": ok, "versions": versions}


def run_worker(name: str, base_url: str, calls: int, warmup: int, threads: int) -> None:
    if name.startswith("raw-"):
        result = run_raw(name, base_url, calls, warmup, threads)
    elif name.startswith("ours"):
        result = run_ours(name, base_url, calls, warmup, threads)
    else:
        result = run_dspy(name, base_url, calls, warmup, threads)
    print(json.dumps({"client": name, "calls": calls, **result}))


# -- the parent: set-up, rounds, report -----------------------------------------------------
def dspy_python() -> str | None:
    for venv in DSPY_VENVS:
        python = venv / "bin" / "python"
        if python.exists() and subprocess.run([python, "-c", "import dspy"]).returncode == 0:
            return str(python)
    return None


def measure(python: str, name: str, base_url: str, args: argparse.Namespace) -> dict:
    command = [python, __file__, "--worker", name, "--base-url", base_url]
    command += ["--calls", str(args.calls), "--warmup", str(args.warmup)]
    command += ["--in-flight", str(args.in_flight)]
    before = stub_stats(base_url)  # and reset the stub's counters
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"client {name!r} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["stub"] = stub_stats(base_url)
    # The stub's share of one core while the client ran (start-up included): it must
    # stay far from 100% for the numbers to measure the client.
    result["stub"]["cpu_share"] = (result["stub"]["cpu_s"] - before["cpu_s"]) / wall
    result["calls_per_s"] = args.calls / result["elapsed_s"]
    return result


LABELS = {
    "raw-httpx": "raw pool: 64 threads, one httpx.Client",
    "raw-stdlib": "raw pool: 64 threads, http.client each",
    "ours": "apprentice bootstrap_traces (concurrency=64)",
    "ours-httpx": "  what-if: same, one shared httpx pool",
    "ours-httpx-per-thread": "  what-if: same, httpx.Client per thread",
    "dspy-bootstrap": "DSPy bootstrap_trace_data (num_threads=64)",
    "dspy-evaluate": "DSPy Evaluate (num_threads=64, no progress)",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="timed calls per client per round")
    parser.add_argument("--warmup", type=int, default=128, help="untimed calls before timing")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median taken)")
    parser.add_argument("--in-flight", type=int, default=64, help="threads / concurrency")
    parser.add_argument("--delay", type=float, default=0.1, help="the stub's reply delay (s)")
    parser.add_argument("--no-dspy", action="store_true", help="skip DSPy")
    parser.add_argument(
        "--diagnose", action="store_true", help="also run ours over httpx (what-ifs)"
    )
    parser.add_argument("--json", metavar="OUT", help="write every number to this JSON file")
    parser.add_argument("--stub", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stub:
        serve_stub(args.delay)
        return 0
    if args.worker:
        run_worker(args.worker, args.base_url, args.calls, args.warmup, args.in_flight)
        return 0

    pythons = {"raw-httpx": sys.executable, "raw-stdlib": sys.executable, "ours": sys.executable}
    if args.diagnose:
        pythons["ours-httpx"] = pythons["ours-httpx-per-thread"] = sys.executable
    dspy = None if args.no_dspy else dspy_python()
    if dspy is not None:
        pythons["dspy-bootstrap"] = pythons["dspy-evaluate"] = dspy
    elif not args.no_dspy:
        print(
            f"no DSPy venv at {' or '.join(map(str, DSPY_VENVS))}: create one with "
            "`python -m venv .bench-venvs/dspy-boot && .bench-venvs/dspy-boot/bin/pip install "
            "dspy`; DSPy skipped",
            file=sys.stderr,
        )
    ideal = args.in_flight / args.delay
    stub = subprocess.Popen(
        [sys.executable, __file__, "--stub", "--delay", str(args.delay)],
        stdout=subprocess.PIPE,
        text=True,
    )
    base_url = f"http://127.0.0.1:{int(stub.stdout.readline())}/v1"
    load_before = os.getloadavg()[0]
    rounds: list[dict[str, dict]] = []
    try:
        names = list(pythons)
        for i in range(args.rounds):
            order = names[i % len(names) :] + names[: i % len(names)]  # rotate to spread drift
            results = {}
            for name in order:
                results[name] = r = measure(pythons[name], name, base_url, args)
                print(
                    f"round {i + 1}: {name:15} {r['calls_per_s']:6.0f} calls/s "
                    f"(stub: {r['stub']['requests']} requests over {r['stub']['connections']} new "
                    f"connections, max {r['stub']['max_in_flight']} in flight, "
                    f"{r['stub']['cpu_share']:.0%} of a core)",
                    file=sys.stderr,
                    flush=True,
                )
            rounds.append(results)
    finally:
        stub.terminate()
        stub.wait()
    load = {"before": load_before, "after": os.getloadavg()[0]}

    summary = {}
    for name in pythons:
        rates = [r[name]["calls_per_s"] for r in rounds]
        summary[name] = {
            "calls_per_s": statistics.median(rates),
            "min": min(rates),
            "max": max(rates),
            "of_ideal": statistics.median(rates) / ideal,
            "max_in_flight": max(r[name]["stub"]["max_in_flight"] for r in rounds),
        }
    versions = {n: rounds[0][n]["versions"] for n in pythons}
    ours = summary["ours"]["of_ideal"]

    print(
        f"\n{args.calls} calls per client, {args.in_flight} in flight, stub delay "
        f"{args.delay * 1000:.0f} ms: ideal {ideal:.0f} calls/s; median of {args.rounds} rounds"
    )
    print(f"{'client':46} {'calls/s':>8} {'(min-max)':>11} {'of ideal':>9} {'in flight':>9}")
    for name, row in summary.items():
        spread = f"{row['min']:.0f}-{row['max']:.0f}"
        print(
            f"{LABELS[name]:46} {row['calls_per_s']:8.0f} {spread:>11} "
            f"{row['of_ideal']:8.0%} {row['max_in_flight']:9d}"
        )
    print(
        f"\nmachine: {os.cpu_count()} cores, {platform.platform()}, python "
        f"{platform.python_version()}; load average {load['before']:.2f} before, "
        f"{load['after']:.2f} after"
    )
    for name, packages in versions.items():
        print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in sorted(packages.items())))
    verdict = "PASS" if ours >= BAR else "FAIL"
    print(f"\n  [{verdict}] apprentice bootstrap >= {BAR:.0%} of ideal: {ours:.1%}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "args": vars(args),
                    "ideal": ideal,
                    "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                    "load": load,
                    "versions": versions,
                    "rounds": rounds,
                    "summary": summary,
                },
                indent=2,
            )
        )
    return 0 if ours >= BAR else 1


if __name__ == "__main__":
    sys.exit(main())
