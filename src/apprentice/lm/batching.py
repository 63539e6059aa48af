"""The batching thread an engine runs: it gathers requests that arrive close together into
one generate call, lets requests take turns, and answers every waiter, even when the
engine closes or the thread dies.

``BatchingLoop`` is a mixin of ``lm.engine.Engine``: the engine queues ``Job`` lists on
``_queue`` (under ``_thread_lock``, after ``_ensure_thread``), and the loop hands each batch
to the engine's ``_run_batch``; ``_shares_call`` says which jobs may share a call.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apprentice.lm.base import LMError

__all__ = ["BASE", "BatchingLoop", "Job"]

log = logging.getLogger(__name__)

BASE = "__base__"  # the adapter name of requests that use none (peft's name for it)


@dataclass(eq=False)
class Job:
    """One queued request: its prompt tokens, adapter, settings and the future to answer."""

    prompt_ids: list[int]
    adapter: str  # BASE for none
    sampling: Any  # the engine's settings for it (``Engine._sampling``)
    n: int
    max_new_tokens: int
    stop: tuple[str, ...]
    max_batch_size: int
    wait_s: float
    model: str
    future: Future
    submitted: float
    cancel: threading.Event | None = None  # set: the client is gone, stop this request
    slot: Any = BASE  # the adapter's handle, set when the batch runs
    turns: list[int] = field(default_factory=lambda: [0])  # batches its submit call has had


class BatchingLoop:
    """The gathering loop; the engine provides ``label``, ``base_model``, ``_queue``,
    ``_thread_lock``, ``_thread``, ``_run_batch`` and ``_shares_call``."""

    def _ensure_thread(self) -> None:
        """Starts the batching thread unless it runs (under ``_thread_lock``)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._serve,
                name=f"{self.label}-lm:{Path(self.base_model).name}",
                daemon=True,
            )
            self._thread.start()

    def close(self) -> None:
        """Stops the batching thread once the queued requests are answered. A request
        submitted meanwhile is answered too: by this thread before it stops, or by a new one."""
        with self._thread_lock:
            thread = self._thread
            if thread is None:
                return
            self._queue.put(None)
        thread.join()

    def _serve(self) -> None:
        pending: deque[Job] = deque()
        batch: list[Job] = []
        stopping = False
        try:
            while True:
                if not pending:
                    if stopping:
                        if self._stop_if_idle(pending):
                            return
                    else:
                        item = self._queue.get()
                        if item is None:
                            stopping = True
                            continue
                        pending.extend(item)
                if not self._gather(pending):
                    stopping = True  # finish what is pending, then stop
                batch = self._take_batch(pending)
                try:
                    self._run_batch(batch)
                except Exception as exc:  # never let the thread die with requests waiting on it
                    log.exception("the %s batching thread failed on a batch", self.label)
                    self._fail(batch, exc)
        except BaseException as exc:  # the thread dies (e.g. KeyboardInterrupt): nobody waits
            with self._thread_lock:
                self._thread = None
                self._fail([*batch, *pending, *self._drain()], exc)
            raise

    def _stop_if_idle(self, pending: deque[Job]) -> bool:
        """True, with the thread marked stopped, when nothing is queued; else the queued jobs
        move to ``pending``. Under ``_thread_lock``: a later submit starts a new thread."""
        with self._thread_lock:
            pending.extend(self._drain())
            if pending:
                return False
            self._thread = None
            return True

    def _drain(self) -> list[Job]:
        jobs: list[Job] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return jobs
            jobs.extend(item or ())  # a second close's None: stopping already

    def _fail(self, jobs, exc: BaseException) -> None:
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(
                    LMError(f"{self.label} backend failed: {type(exc).__name__}: {exc}")
                )

    def _gather(self, pending: deque[Job]) -> bool:
        """Adds what is queued now to ``pending``, then waits for more until the oldest job's
        batch is full, no request came for its wait, or it has waited ten times that; False
        once told to stop."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return False
            pending.extend(item)
        first = pending[0]
        last_arrival = time.perf_counter()
        while sum(j.n for j in pending) < first.max_batch_size:
            deadline = min(last_arrival, first.submitted + 9 * first.wait_s) + first.wait_s
            left = deadline - time.perf_counter()
            try:
                item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                return True
            if item is None:
                return False
            pending.extend(item)
            last_arrival = time.perf_counter()
        return True

    def _take_batch(self, pending: deque[Job]) -> list[Job]:
        """Requests take turns: the batch starts with a job of the submit call that has had
        the fewest batches (the oldest among those), and takes the pending jobs that can
        share its generate call, in the same order, within the smallest ``max_batch_size``
        among them; the rest stay queued. A large request thus delays a small one by one
        batch, not by all of its own."""
        ordered = sorted(pending, key=lambda j: (j.turns[0], j.submitted))
        first = ordered[0]
        batch, rows, capacity = [first], first.n, first.max_batch_size
        for job in ordered[1:]:
            fits = rows + job.n <= min(capacity, job.max_batch_size)
            if fits and self._shares_call(first, job):
                batch.append(job)
                rows += job.n
                capacity = min(capacity, job.max_batch_size)
        taken = set(batch)
        kept = [job for job in pending if job not in taken]
        pending.clear()
        pending.extend(kept)
        for turns in {id(job.turns): job.turns for job in batch}.values():
            turns[0] += 1
        return batch
