"""A mixed load on apprentice's server: many clients, adapter loads and unloads, bad requests.

    .venv/bin/python scripts/soak_server.py [--seconds 60] [--clients 256] [--report FILE]
        [--max-rss-growth-mb 150]

Starts ``python -m apprentice.serve RUN_DIR`` in a subprocess on a free loopback port
with an API key (RUN_DIR: a tiny random Llama student with adapters ``a`` and ``b``, built
in a temporary directory), then for ``--seconds``:

- ``--clients`` threads, each on its own keep-alive connection, send chat and completions
  requests to the base, ``a``, ``b`` and ``hot``, and check each answer against the greedy
  answer of that model (``hot`` answers as ``a`` or ``b``, or is a 404 while unloaded);
- one thread loads ``hot`` (from ``b``), replaces it in place (from ``a``), tries to replace
  it with adapters that do not fit (400s that must leave it serving) and unloads it;
- one thread sends the bad requests of issue #10: ``max_tokens`` of 10**12 and 500000,
  lone surrogates in ``model``, content and an adapter name, JSON nested 100000 deep,
  ``seed=2**70``, NaN, ``Content-Length: -1``, a wrong key, a path outside the adapter root,
  clients that leave mid-request, and 50 idle connections held open for a while.

The server's RSS is sampled every second; the first sample after ``--warmup`` seconds is the
baseline. The bar (exit 1 if missed): no 5xx at all (none of these requests deserves one),
every good request answered with the right text, no bad request answered with anything but
its 4xx, RSS growth after warm-up under ``--max-rss-growth-mb``. Everything is loopback and
the script stops by itself (the load, then the server; at most ``--seconds`` + ~2 minutes).
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

KEY = "soak-key"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
PROMPTS = [
    "Hi, I was charged twice for order A12345.",
    "The app crashes every time I open order A55555.",
    "Order A77777 has not arrived after two weeks.",
    "ticket billing bug shipping",
]
TEXTS = [*PROMPTS, "ticket category billing bug shipping order_id reasoning answer"] * 8
MAX_TOKENS = 8


def build_run(root: Path) -> Path:
    """A run directory: a tiny random Llama student, adapters a and b, and two adapters in
    ``misfit/`` whose tensors do not fit the model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from apprentice.train.export import AdapterManifest, write_manifest
    from apprentice.train.tiny import make_tiny_student

    base = make_tiny_student("causal", TEXTS, root / "base", hidden_size=64, num_layers=2)
    model = AutoModelForCausalLM.from_pretrained(base)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a wide spread: greedy answers are varied token sequences
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.2)
    model.save_pretrained(base)
    run = root / "run"
    targets = ["q_proj", "v_proj", "down_proj"]
    for seed, name in enumerate(("a", "b"), start=1):
        torch.manual_seed(seed)
        lora = LoraConfig(r=8, target_modules=targets, init_lora_weights=False)
        folder = run / "adapters" / name / "adapter"
        get_peft_model(AutoModelForCausalLM.from_pretrained(base), lora).save_pretrained(folder)
        manifest = AdapterManifest(
            name=name, kind="causal", method="lora", base_model=str(base), base_model_hash="",
            dataset_hash="", predictors=["answer"], train_config={},
            lora_config={"r": 8, "target_modules": targets}, metrics={},
            servable={"vllm": True, "reasons": []},
        )  # fmt: skip
        write_manifest(folder, manifest)
    for how in ("shape", "missing"):
        folder = run / "misfit" / how
        folder.mkdir(parents=True)
        source = run / "adapters" / "b" / "adapter"
        (folder / "adapter_config.json").write_bytes((source / "adapter_config.json").read_bytes())
        weights = load_file(source / "adapter_model.safetensors")
        last = sorted(weights)[-1]
        if how == "shape":
            weights[last] = torch.zeros(weights[last].shape[0], weights[last].shape[1] * 4)
        else:
            del weights[last]
        save_file(weights, folder / "adapter_model.safetensors")
    return run


class Server:
    """``python -m apprentice.serve RUN`` as a subprocess, its RSS sampled."""

    def __init__(self, run: Path, log_path: Path, threads: int | None) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        env = {**os.environ, "VLLM_API_KEY": KEY}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        command = [sys.executable, "-m", "apprentice.serve", str(run)]
        command += ["--port", str(self.port), "--max-new-tokens", str(MAX_TOKENS)]
        self.log = open(log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.rss: list[tuple[float, int]] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the server exited with {self.process.returncode}; see {log_path}"
                )
            try:
                if request(self.port, "GET", "/health", None, {})[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"the server was not healthy in 120 s; see {log_path}")

    def sample(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as status:
            line = next(line for line in status if line.startswith("VmRSS:"))
        kib = int(line.split()[1])
        self.rss.append((time.monotonic(), kib * 1024))
        return kib * 1024

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def request(port, method, path, body, headers, connection=None, timeout=120):
    """(status, parsed reply) of one request; on ``connection`` if given (kept alive)."""
    own = connection is None
    connection = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    try:
        connection.request(method, path, body=data, headers=headers)
        reply = connection.getresponse()
        raw = reply.read()
    finally:
        if own:
            connection.close()
    kind = reply.getheader("Content-Type", "")
    return reply.status, json.loads(raw) if "json" in kind and raw else raw.decode()


def chat_body(model: str, prompt: str, **options) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], **options}


def answer_of(status: int, reply) -> str | None:
    if status != 200:
        return None
    choice = reply["choices"][0]
    return choice["message"]["content"] if "message" in choice else choice["text"]


class Soak:
    def __init__(self, port: int, base: str, seconds: float) -> None:
        self.port = port
        self.base = base
        self.stop_at = time.monotonic() + seconds
        self.counts: collections.Counter = collections.Counter()
        self.statuses: collections.Counter = collections.Counter()
        self.problems: list[str] = []
        self.lock = threading.Lock()
        self.expected: dict[tuple[str, int], str] = {}

    def note(self, kind: str, problem: str | None = None, status: int | None = None) -> None:
        with self.lock:
            self.counts[kind] += 1
            self.statuses[status or "no reply"] += 1
            if problem is not None:
                self.counts["problems"] += 1
                if len(self.problems) < 50:
                    self.problems.append(problem)

    def learn_answers(self) -> None:
        for model in (self.base, "a", "b"):
            for i, prompt in enumerate(PROMPTS):
                status, reply = request(self.port, "POST", "/v1/chat/completions",
                                        chat_body(model, prompt, max_tokens=MAX_TOKENS), AUTH)  # fmt: skip
                assert status == 200, reply
                self.expected[model, i] = answer_of(status, reply)

    def client(self, seed: int) -> None:
        rng = random.Random(seed)
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        while time.monotonic() < self.stop_at:
            model = rng.choice([self.base, "a", "b", "hot"])
            i = rng.randrange(len(PROMPTS))
            chat = rng.random() < 0.7
            if chat:
                path, body = "/v1/chat/completions", chat_body(model, PROMPTS[i])
            else:
                from apprentice.formats import messages_to_prompt

                prompt = messages_to_prompt([{"role": "user", "content": PROMPTS[i]}])
                path, body = "/v1/completions", {"model": model, "prompt": prompt}
            body["max_tokens"] = MAX_TOKENS
            try:
                status, reply = request(self.port, "POST", path, body, AUTH, connection)
            except (OSError, http.client.HTTPException) as exc:
                self.note("good", f"{model} {path}: no answer: {exc!r}")
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
                continue
            text = answer_of(status, reply)
            if model == "hot":
                right = status == 404 or text in (self.expected["a", i], self.expected["b", i])
            else:
                right = status == 200 and text == self.expected[model, i]
            problem = None if right else f"{model} {path}: {status} {str(reply)[:200]}"
            self.note("good", problem, status)
        connection.close()

    def loader(self) -> None:
        steps = [
            ({"lora_name": "hot", "lora_path": "adapters/b/adapter"}, {200}),
            ({"lora_name": "hot", "lora_path": "adapters/a/adapter", "load_inplace": True}, {200}),
            ({"lora_name": "hot", "lora_path": "misfit/shape", "load_inplace": True}, {400}),
            ({"lora_name": "hot", "lora_path": "misfit/missing", "load_inplace": True}, {400}),
            ({"lora_name": "new", "lora_path": "misfit/shape"}, {400}),
            (None, {200}),  # unload hot
        ]
        while time.monotonic() < self.stop_at:
            for body, allowed in steps:
                if body is None:
                    path, body = "/v1/unload_lora_adapter", {"lora_name": "hot"}
                else:
                    path = "/v1/load_lora_adapter"
                status, reply = request(self.port, "POST", path, body, AUTH)
                problem = None if status in allowed else f"{path} {body}: {status} {reply!r:.200}"
                self.note("adapter", problem, status)
                time.sleep(0.3)

    def bad_requests(self) -> None:
        user = [{"role": "user", "content": "x"}]
        bodies = [
            (chat_body(self.base, "x", max_tokens=10**12), 400),
            (chat_body(self.base, "x", max_tokens=500_000), 400),
            (b'{"model": "\\ud800x", "messages": [{"role": "user", "content": "x"}]}', 400),
            (b'{"messages": [{"role": "user", "content": "\\ud800x"}]}', 400),
            (b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400),
            ({"messages": user, "seed": 2**70, "temperature": 1.0}, 400),
            (b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', 400),
            (b"{not json", 400),
            (chat_body("no-such-model", "x"), 404),
        ]
        loads = [
            ({"lora_name": "\ud800x", "lora_path": "adapters/a/adapter"}, 400),
            ({"lora_name": "evil", "lora_path": "/etc"}, 400),
            ({"lora_name": "evil", "lora_path": "../../.."}, 400),
        ]
        idle: list[socket.socket] = []
        round_ = 0
        while time.monotonic() < self.stop_at:
            round_ += 1
            for body, expected in bodies:
                self._expect("POST", "/v1/chat/completions", body, AUTH, expected)
            for body, expected in loads:
                data = json.dumps(body, ensure_ascii=True).encode()  # keeps the lone surrogate
                self._expect("POST", "/v1/load_lora_adapter", data, AUTH, expected)
            self._expect("GET", "/v1/models", None, {"Authorization": "Bearer wrong"}, 401)
            # With the key: the server checks the key before the length, so a keyless
            # request is a 401 whatever its length says.
            self._raw(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                + f"Authorization: Bearer {KEY}\r\n".encode()
                + b"Content-Length: -1\r\n\r\n{}",
                b" 400 ",
            )
            self._leave_mid_request()
            if round_ % 5 == 1 and not idle:
                idle = [socket.create_connection(("127.0.0.1", self.port)) for _ in range(50)]
            elif round_ % 5 == 3:
                for connection in idle:
                    connection.close()
                idle = []
            time.sleep(0.2)
        for connection in idle:
            connection.close()

    def _expect(self, method, path, body, headers, expected) -> None:
        try:
            status, reply = request(self.port, method, path, body, headers)
        except (OSError, http.client.HTTPException) as exc:
            self.note("bad", f"{path}: no answer: {exc!r}")
            return
        problem = None if status == expected else f"{path} {body!r:.80}: {status} {reply!r:.200}"
        self.note("bad", problem, status)

    def _raw(self, data: bytes, expected: bytes) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as connection:
            connection.sendall(data)
            reply = connection.recv(4096)
        line = reply.split(b"\r\n")[0] + b" "
        status = int(line.split()[1]) if len(line.split()) > 1 else None
        self.note("bad", None if expected in line else f"raw: {reply[:100]!r}", status)

    def _leave_mid_request(self) -> None:
        body = json.dumps(chat_body(self.base, PROMPTS[0], max_tokens=1500)).encode()
        head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as connection:
            connection.sendall(head.encode() + body)
            time.sleep(0.05)
        self.note("left", None, "left")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--warmup", type=float, default=5, help="seconds before the RSS baseline")
    parser.add_argument("--max-rss-growth-mb", type=float, default=150)
    parser.add_argument("--report", default=None, help="write the numbers as JSON here")
    parser.add_argument(
        "--server-threads",
        type=int,
        default=1,
        help="the server's torch threads (OMP_NUM_THREADS; 0: torch's default). On a CPU "
        "shared with other jobs, two spinning threads made a batch 10-100x slower",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="apprentice-soak-") as tmp:
        run = build_run(Path(tmp))
        server = Server(run, Path(tmp) / "server.log", args.server_threads)
        try:
            report = soak(server, args)
        finally:
            server.stop()
            report_log = (Path(tmp) / "server.log").read_text(errors="replace")
        report["server_log_tail"] = report_log.splitlines()[-5:]
    print(json.dumps({k: v for k, v in report.items() if k != "server_log_tail"}, indent=2))
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2))
    return 0 if report["passed"] else 1


def soak(server: Server, args: argparse.Namespace) -> dict:
    models = request(server.port, "GET", "/v1/models", None, AUTH)[1]
    load = Soak(server.port, models["data"][0]["id"], args.seconds)
    load.learn_answers()
    threads = [
        threading.Thread(target=load.client, args=(i,), daemon=True) for i in range(args.clients)
    ]
    threads += [threading.Thread(target=f, daemon=True) for f in (load.loader, load.bad_requests)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    baseline = None
    while any(t.is_alive() for t in threads) and time.monotonic() < load.stop_at + 120:
        rss = server.sample()
        if baseline is None and time.monotonic() - began >= args.warmup:
            baseline = rss
        time.sleep(1.0)
    unfinished = sum(t.is_alive() for t in threads)
    end = server.sample()
    baseline = baseline or server.rss[0][1]
    growth_mb = (end - baseline) / 2**20
    counts = dict(load.counts)
    five_hundreds = sum(v for k, v in load.statuses.items() if isinstance(k, int) and k >= 500)
    passed = (
        not load.problems
        and not five_hundreds
        and not unfinished
        and growth_mb < args.max_rss_growth_mb
    )
    return {
        "passed": passed,
        "seconds": round(time.monotonic() - began, 1),
        "clients": args.clients,
        "requests": {k: v for k, v in counts.items() if k != "problems"},
        "statuses": {str(k): v for k, v in sorted(load.statuses.items(), key=str)},
        "status_5xx": five_hundreds,
        "problems": counts.get("problems", 0),
        "first_problems": load.problems[:10],
        "threads_unfinished": unfinished,
        "rss_mb": {
            "first": round(server.rss[0][1] / 2**20, 1),
            "baseline": round(baseline / 2**20, 1),
            "max": round(max(r for _, r in server.rss) / 2**20, 1),
            "end": round(end / 2**20, 1),
            "growth_after_warmup": round(growth_mb, 1),
        },
    }


if __name__ == "__main__":
    raise SystemExit(main())
