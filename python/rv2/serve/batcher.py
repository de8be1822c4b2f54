"""The dynamic batcher: requests gathered into one backend call, as Triton's.

`instances` compute threads (Triton's instance count) share one queue; one of
them at a time gathers. It takes the oldest request and, while the queue holds
fewer rows than the target (the largest `preferred_batch_size`, else
`max_batch_size`), waits at most `max_queue_delay_microseconds` counted from that
request's arrival. Then it forms the batch: with preferred sizes, the largest
one the queued rows reach (as Triton does), else every queued request that fits
in `max_batch_size`. With a delay of 0 it never waits, and requests that arrive
while a batch computes still form the next batch together.

`submit` is called on the event loop and returns an asyncio future. Results go
back in one `call_soon_threadsafe` per batch, not one per request: the loop
wakes once for the whole batch.

The queue is bounded (`max_queue_size` requests): `submit` refuses beyond it
(503 + Retry-After upstream), so memory never grows with the load. A request
whose deadline passes while queued is answered with 503 and never computed.
"""
from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from rv2._native import copy_finite
from rv2.serve.protocol import RequestError


@dataclass
class _Item:
    x: np.ndarray
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    arrived: float
    deadline: float | None


@dataclass(frozen=True)
class BatchResult:
    """What a request gets back: its probabilities and how its batch went."""

    probs: np.ndarray
    queue_s: float
    compute_s: float
    batch_size: int


def _deliver(answers: list) -> None:
    """On the loop: settle the futures still waiting (a cancelled one is dropped)."""
    for fut, value, is_error in answers:
        if not fut.done():
            if is_error:
                fut.set_exception(value)
            else:
                fut.set_result(value)


class Batcher:
    def __init__(self, run: Callable[[np.ndarray], np.ndarray], *, max_batch_size: int,
                 max_queue_delay_microseconds: int = 0, preferred_batch_size: Sequence[int] = (),
                 max_queue_size: int = 64, instances: int = 1,
                 on_batch: Callable[[int, int, float], None] | None = None, name: str = "model"):
        if max_batch_size < 1 or max_queue_size < 1 or max_queue_delay_microseconds < 0 or instances < 1:
            raise RequestError("max_batch_size, max_queue_size and instances must be >= 1 and the "
                               "queue delay >= 0", 500)
        bad = [p for p in preferred_batch_size if not 1 <= p <= max_batch_size]
        if bad:
            raise RequestError(f"preferred_batch_size {bad} outside 1..max_batch_size "
                               f"({max_batch_size})", 500)
        self.run = run
        self.max_batch_size = int(max_batch_size)
        self.delay_s = max_queue_delay_microseconds / 1e6
        self.preferred = sorted({int(p) for p in preferred_batch_size})
        self.target = self.preferred[-1] if self.preferred else self.max_batch_size
        self.max_queue_size = int(max_queue_size)
        self.on_batch = on_batch  # (requests, rows, compute seconds) after each execution
        self._q: collections.deque[_Item] = collections.deque()
        self._rows = 0
        self._cond = threading.Condition()
        self._gathering = False  # one instance at a time forms a batch
        self._closed = False
        self._threads = [threading.Thread(target=self._loop, name=f"rv2-batcher-{name}-{i}", daemon=True)
                         for i in range(int(instances))]
        for t in self._threads:
            t.start()

    # ------------------------------------------------------------------ callers
    def submit(self, x: np.ndarray, deadline: float | None = None) -> asyncio.Future:
        """On the event loop: a future of `BatchResult`; refuses (503) when the queue is
        full or closing."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._cond:
            if self._closed:
                raise RequestError("server is shutting down", 503, retry_after=1, reason="REJECTED")
            if len(self._q) >= self.max_queue_size:
                raise RequestError(f"queue full ({self.max_queue_size} requests waiting); "
                                   "retry later", 503, retry_after=1, reason="REJECTED")
            self._q.append(_Item(x, fut, loop, time.monotonic(), deadline))
            self._rows += len(x)
            self._cond.notify()
        return fut

    def pending(self) -> int:
        with self._cond:
            return len(self._q)

    def close(self, timeout: float | None = None) -> None:
        """Stop taking requests, finish the queued ones, end the threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)

    # ------------------------------------------------------------------ threads
    def _size(self) -> int:
        """Rows the next batch takes (at most): the largest preferred size the queue
        reaches, else the maximum."""
        for p in reversed(self.preferred):
            if p <= self._rows:
                return p
        return self.max_batch_size

    def _take(self) -> list[_Item] | None:
        with self._cond:
            while not self._q or self._gathering:
                if self._closed and not self._q:
                    return None
                self._cond.wait()
            self._gathering = True
            try:
                if self.delay_s > 0:
                    until = self._q[0].arrived + self.delay_s
                    while self._rows < self.target and not self._closed:
                        left = until - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                size = self._size()
                batch, rows = [], 0
                while self._q and rows + len(self._q[0].x) <= size:
                    item = self._q.popleft()
                    batch.append(item)
                    rows += len(item.x)
                if not batch:  # larger than the batch size (checked upstream): run it alone
                    item = self._q.popleft()
                    batch, rows = [item], len(item.x)
                self._rows -= rows
                return batch
            finally:
                self._gathering = False
                if self._q or self._closed:
                    self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            self._execute(batch)

    def _answer(self, answers: dict) -> None:
        for loop, items in answers.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:
                pass  # that loop has closed: nobody is waiting

    @staticmethod
    def _assemble(live: list[_Item], answers: dict) -> tuple[np.ndarray | None, list[_Item]]:
        """The batch the backend runs: every live request's rows copied once into one
        float32 array, checked finite in the same pass (a request's tensor is usually a
        read-only view of its body; a lone writable one is only checked). A request with
        a NaN or an infinity is answered 400 and left out; the next one's rows take its
        place."""
        def refuse(it: _Item) -> None:
            answers.setdefault(it.loop, []).append((it.future, RequestError(
                "input contains NaN or infinity"), True))

        if not live:
            return None, live
        x = live[0].x
        if len(live) == 1 and x.dtype == np.float32 and x.flags.writeable and x.flags.aligned \
                and x.flags.c_contiguous:
            if copy_finite(x, None):
                return x, live
            refuse(live[0])
            return None, []
        x = np.empty((sum(len(it.x) for it in live), *x.shape[1:]), np.float32)
        kept, pos = [], 0
        for it in live:
            n = len(it.x)
            if copy_finite(it.x, x[pos:pos + n]):
                kept.append(it)
                pos += n
            else:
                refuse(it)
        return x[:pos], kept

    def _execute(self, batch: list[_Item]) -> None:
        start = time.monotonic()
        live, answers = [], {}
        for item in batch:
            if item.future.cancelled():
                continue  # the caller gave up (client gone); a later cancel is dropped on delivery
            if item.deadline is not None and start > item.deadline:
                waited = (start - item.arrived) * 1e3
                answers.setdefault(item.loop, []).append((item.future, RequestError(
                    f"request timed out after {waited:.0f} ms in the queue", 503, retry_after=1,
                    reason="REJECTED"), True))
                continue
            live.append(item)
        x, live = self._assemble(live, answers)
        if not live:
            self._answer(answers)
            return
        try:
            probs = self.run(x)
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the error
            err = RequestError(f"inference failed: {type(exc).__name__}: {exc}", 500, reason="BACKEND")
            for it in live:
                answers.setdefault(it.loop, []).append((it.future, err, True))
            self._answer(answers)
            return
        compute = time.monotonic() - start
        if self.on_batch is not None:
            self.on_batch(len(live), len(x), compute)
        pos = 0
        for it in live:
            n = len(it.x)
            answers.setdefault(it.loop, []).append(
                (it.future, BatchResult(probs[pos:pos + n], start - it.arrived, compute, len(x)), False))
            pos += n
        self._answer(answers)


__all__ = ["BatchResult", "Batcher"]
