"""The dynamic batcher: requests gathered into one backend call, as Triton's.

One compute thread per model. It takes the oldest request and, while the queue
holds fewer rows than the target (the largest `preferred_batch_size`, else
`max_batch_size`), waits at most `max_queue_delay_microseconds` counted from that
request's arrival; then it runs every queued request that fits in
`max_batch_size` as one batch. With a delay of 0 it never waits, and requests
that arrive while a batch computes still form the next batch together.

The queue is bounded (`max_queue_size` requests): `submit` refuses beyond it
(503 + Retry-After upstream), so memory never grows with the load. A request
whose deadline passes while queued is answered with 503 and never computed.
"""
from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from rv2.serve.protocol import RequestError


@dataclass
class _Item:
    x: np.ndarray
    future: Future
    arrived: float
    deadline: float | None
    queue_s: float = 0.0
    compute_s: float = 0.0
    batch: int = 0
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BatchResult:
    """What a request gets back: its probabilities and how its batch went."""

    probs: np.ndarray
    queue_s: float
    compute_s: float
    batch_size: int


class Batcher:
    def __init__(self, run: Callable[[np.ndarray], np.ndarray], *, max_batch_size: int,
                 max_queue_delay_microseconds: int = 0, preferred_batch_size: Sequence[int] = (),
                 max_queue_size: int = 64, on_batch: Callable[[int, int, float], None] | None = None,
                 name: str = "model"):
        if max_batch_size < 1 or max_queue_size < 1 or max_queue_delay_microseconds < 0:
            raise RequestError("max_batch_size and max_queue_size must be >= 1 and the queue "
                               "delay >= 0", 500)
        bad = [p for p in preferred_batch_size if not 1 <= p <= max_batch_size]
        if bad:
            raise RequestError(f"preferred_batch_size {bad} outside 1..max_batch_size "
                               f"({max_batch_size})", 500)
        self.run = run
        self.max_batch_size = int(max_batch_size)
        self.delay_s = max_queue_delay_microseconds / 1e6
        self.target = max(preferred_batch_size) if preferred_batch_size else self.max_batch_size
        self.max_queue_size = int(max_queue_size)
        self.on_batch = on_batch  # (requests, rows, compute seconds) after each execution
        self._q: collections.deque[_Item] = collections.deque()
        self._rows = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"rv2-batcher-{name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ callers
    def submit(self, x: np.ndarray, deadline: float | None = None) -> Future:
        """A future of `BatchResult`; refuses (503) when the queue is full or closing."""
        fut: Future = Future()
        with self._cond:
            if self._closed:
                raise RequestError("server is shutting down", 503, retry_after=1, reason="REJECTED")
            if len(self._q) >= self.max_queue_size:
                raise RequestError(f"queue full ({self.max_queue_size} requests waiting); "
                                   "retry later", 503, retry_after=1, reason="REJECTED")
            self._q.append(_Item(x, fut, time.monotonic(), deadline))
            self._rows += len(x)
            self._cond.notify()
        return fut

    def pending(self) -> int:
        with self._cond:
            return len(self._q)

    def close(self, timeout: float | None = None) -> None:
        """Stop taking requests, finish the queued ones, end the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ thread
    def _take(self) -> list[_Item] | None:
        with self._cond:
            while not self._q and not self._closed:
                self._cond.wait()
            if not self._q:
                return None
            if self.delay_s > 0:
                until = self._q[0].arrived + self.delay_s
                while self._rows < self.target and not self._closed:
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            batch, rows = [], 0
            while self._q and rows + len(self._q[0].x) <= self.max_batch_size:
                item = self._q.popleft()
                batch.append(item)
                rows += len(item.x)
            if not batch:  # larger than max_batch_size (checked upstream): run it alone
                item = self._q.popleft()
                batch, rows = [item], len(item.x)
            self._rows -= rows
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            self._execute(batch)

    def _execute(self, batch: list[_Item]) -> None:
        start = time.monotonic()
        live = []
        for item in batch:
            if not item.future.set_running_or_notify_cancel():
                continue  # the caller gave up (client gone)
            if item.deadline is not None and start > item.deadline:
                waited = (start - item.arrived) * 1e3
                item.future.set_exception(RequestError(
                    f"request timed out after {waited:.0f} ms in the queue", 503, retry_after=1,
                    reason="REJECTED"))
                continue
            live.append(item)
        if not live:
            return
        x = live[0].x if len(live) == 1 else np.concatenate([it.x for it in live])
        try:
            probs = self.run(x)
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the error
            err = RequestError(f"inference failed: {type(exc).__name__}: {exc}", 500, reason="BACKEND")
            for it in live:
                it.future.set_exception(err)
            return
        compute = time.monotonic() - start
        if self.on_batch is not None:
            self.on_batch(len(live), len(x), compute)
        pos = 0
        for it in live:
            n = len(it.x)
            it.future.set_result(BatchResult(probs[pos:pos + n], start - it.arrived, compute, len(x)))
            pos += n


__all__ = ["BatchResult", "Batcher"]
