"""A model-free Engine for tests of the shared batching code: every prompt is its
characters' codes, every answer says which batch it came from, and a batch can be held at
a gate so a test decides exactly what happens while it runs."""

from __future__ import annotations

import threading

from apprentice.lm.base import Request, Response, Usage
from apprentice.lm.engine import Engine


class StubEngine(Engine):
    label = "stub"

    def __init__(self, max_model_len: int = 1000) -> None:
        self.base_model = "stub"
        self.kind = "causal"
        self.tokenizer = None
        self.max_model_len = max_model_len
        self._start_table()
        self.batches: list[list[str]] = []  # the prompts of each generate call, in order
        self.gate = threading.Event()  # cleared: a batch waits here until the test sets it
        self.gate.set()
        self.running = threading.Event()  # set once a batch has reached the gate

    def encode(self, messages, template=None) -> list[int]:
        return [ord(c) for c in messages[-1]["content"]]

    def decode(self, ids: list[int]) -> str:
        return "".join(map(chr, ids))

    def _sampling(self, request, max_new_tokens, stop):
        return (request.temperature, max_new_tokens)

    def _generate(self, jobs):
        self.running.set()
        self.gate.wait()
        self.batches.append([self.decode(job.prompt_ids) for job in jobs])
        number = len(self.batches)
        return [
            Response(texts=[f"batch {number}"] * job.n, usage=Usage(len(job.prompt_ids), 1))
            for job in jobs
        ]


def ask(text: str, **options) -> Request:
    return Request(messages=({"role": "user", "content": text},), **options)
