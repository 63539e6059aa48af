"""Slow-loris against apprentice's HTTP layer: how long a normal client waits while many
clients trickle their request heads.

    .venv/bin/python scripts/bench_slow_clients.py [--tricklers 1000] [--seconds 30]

The server is ``serve.httpd.HTTPServer`` with its defaults (512 request slots, the
lobby's caps and deadlines) and a stand-in app whose every route answers at once, so
what is measured is the HTTP layer alone, not a model. Each trickler sends one byte of
a request head every ``--every`` seconds (5 s, as in issue 18); one the server closes
(its head deadline, an eviction) is replaced at once, so ``--tricklers`` stay connected.
Meanwhile a normal client sends ``GET /v1/models`` on a fresh connection every 0.5 s;
the script prints the median and the worst of those waits and exits non-zero when the
worst is over ``--bar`` seconds (1 s). Everything runs on loopback in this process.
"""

from __future__ import annotations

import argparse
import http.client
import resource
import socket
import statistics
import sys
import threading
import time

from apprentice.serve.httpd import IDLE_TIMEOUT_S, MAX_CONNECTIONS, HTTPServer


class _App:
    def admit(self, method, target, headers):
        return None

    def handle(self, method, target, headers, body, client_gone):
        return 200, {"object": "list", "data": []}


def _normal_request(address) -> float:
    began = time.monotonic()
    connection = http.client.HTTPConnection(*address, timeout=30)
    connection.request("GET", "/v1/models")
    reply = connection.getresponse()
    reply.read()
    connection.close()
    if reply.status != 200:
        raise RuntimeError(f"the normal client got HTTP {reply.status}")
    return time.monotonic() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tricklers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--every", type=float, default=5.0, help="seconds between a trickler's bytes"
    )
    parser.add_argument("--bar", type=float, default=1.0)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * args.tricklers + 2 * MAX_CONNECTIONS + 256
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))

    server = HTTPServer(("127.0.0.1", 0), _App(), MAX_CONNECTIONS, IDLE_TIMEOUT_S)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    ).start()
    address = server.server_address[:2]
    head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000

    def connect():
        sock = socket.create_connection(address, timeout=10)
        sock.setblocking(False)
        return [sock, 0]

    tricklers = [connect() for _ in range(args.tricklers)]
    replaced = 0
    waits: list[float] = []
    end = time.monotonic() + args.seconds
    next_byte = next_normal = time.monotonic()
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_byte:
            for i, (sock, sent) in enumerate(tricklers):
                try:
                    sock.send(head[sent : sent + 1])
                    tricklers[i][1] += 1
                except OSError:  # closed by the server: a new trickler takes its place
                    sock.close()
                    tricklers[i] = connect()
                    replaced += 1
            next_byte = now + args.every
        if now >= next_normal:
            waits.append(_normal_request(address))
            next_normal = now + 0.5
        time.sleep(0.01)
    for sock, _ in tricklers:
        sock.close()
    evicted = server.lobby.evicted
    server.server_close()
    worst, median = max(waits), statistics.median(waits)
    print(
        f"{args.tricklers} tricklers (a byte every {args.every:g} s, {replaced} replaced, "
        f"{evicted} evicted), {len(waits)} normal requests: median {median * 1000:.1f} ms, "
        f"worst {worst * 1000:.1f} ms (bar {args.bar:g} s)"
    )
    return 0 if worst <= args.bar else 1


if __name__ == "__main__":
    sys.exit(main())
