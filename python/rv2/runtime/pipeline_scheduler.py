"""The pipeline scheduler: stages on their own threads, bounded queues between them,
continuous batching of the denoiser, retries by the one rule.

`run_pipeline(bodies, items, ...)` is `rv2._C.run_pipeline` (csrc/scheduler/) when
the native module is built, else `run_pipeline_py`, its Python twin here, with the
same contract:

    work --encode--> ready --denoise (capacity slots)--> decoded --decode--> judged
         --qc--> written --write (pool of writer threads)--> journal, retry rule

`items` are (prompt index, attempt) pairs; the scheduler names each admitted
attempt by an integer token. `bodies` has one method per stage, called with the
GIL held (the native scheduler takes it only for these calls):

- encode([(token, prompt, attempt), ...])      text encoding + initial noise
- step([(slot, token), ...]) -> [(slot, token)] one denoiser step over the busy slots,
  after placing the joining items in their (free) slots; returns the finished ones
- decode([token, ...]), judge([token, ...])
- prepare_write([token, ...]) -> [path | None]  where each accepted image goes
- encode_image(token) -> bytes                  on a writer thread; the scheduler
  writes the bytes durably (temporary, fsync, rename, fsync folder) to the path
- commit([token, ...]) -> [qc_pass, ...]        journals the batch (after its files)
- done([token, ...], [final, ...], live)        live: queue depths and occupancy so far

Items join free slots at step boundaries; retries go before fresh items. Memory
is bounded: at most `queue_capacity` items wait between two stages. The first
exception of a body stops every stage and is raised by `run_pipeline`; attempts
journaled until then stay, the rest are redone by a resumed run.
"""
from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from rv2 import _native
from rv2.files import atomic_write_bytes
from rv2.generate.executor import next_attempt

STAGES = ("encode_text", "denoise", "decode", "qc", "write")


class _Aborted(Exception):
    pass


class BoundedQueue:
    """FIFO of at most `capacity` items (0: unbounded); see queues.h, its twin."""

    def __init__(self, capacity: int):
        self.cap = capacity
        self.q: collections.deque = collections.deque()
        self.cv = threading.Condition()
        self.closed = self.aborted = False
        self.max_depth = self.pushes = self.depth_sum = 0

    def push(self, v) -> bool:
        with self.cv:
            self.cv.wait_for(lambda: self.aborted or self.cap == 0 or len(self.q) < self.cap)
            if self.aborted or self.closed:
                return False
            self.q.append(v)
            self.pushes += 1
            self.depth_sum += len(self.q)
            self.max_depth = max(self.max_depth, len(self.q))
            self.cv.notify_all()
            return True

    def pop_batch(self, n: int, block: bool) -> list:
        with self.cv:
            if block:
                self.cv.wait_for(lambda: self.aborted or self.closed or self.q)
            if self.aborted:
                return []
            out = [self.q.popleft() for _ in range(min(n, len(self.q)))]
            if out:
                self.cv.notify_all()
            return out

    def close(self):
        with self.cv:
            self.closed = True
            self.cv.notify_all()

    def abort(self):
        with self.cv:
            self.aborted = True
            self.cv.notify_all()

    def depth(self) -> int:
        return len(self.q)

    def mean_depth(self) -> float:
        return self.depth_sum / self.pushes if self.pushes else 0.0


class WorkQueue:
    """Fresh items in order, retries first; empty for good once every item settled."""

    def __init__(self, items):
        self.fresh = collections.deque(items)
        self.retry_q: collections.deque = collections.deque()
        self.outstanding = len(self.fresh)
        self.retries = 0
        self.aborted = False
        self.cv = threading.Condition()

    def pop_batch(self, n: int) -> list:
        with self.cv:
            self.cv.wait_for(lambda: self.aborted or self.outstanding == 0 or self.retry_q or self.fresh)
            out = []
            if self.aborted:
                return out
            while len(out) < n and (self.retry_q or self.fresh):
                out.append((self.retry_q or self.fresh).popleft())
            return out

    def retry(self, item):
        with self.cv:
            self.retry_q.append(item)
            self.retries += 1
            self.cv.notify_all()

    def settle(self) -> bool:
        with self.cv:
            self.outstanding -= 1
            self.cv.notify_all()
            return self.outstanding == 0

    def abort(self):
        with self.cv:
            self.aborted = True
            self.cv.notify_all()

    def depth(self) -> int:
        return len(self.retry_q) + len(self.fresh)


def run_pipeline_py(bodies, items, max_attempts: int, capacity: int, batch: int,
                    queue_capacity: int, write_threads: int) -> dict:
    """Python twin of `rv2._C.run_pipeline` (csrc/scheduler/pipeline.cpp)."""
    if min(max_attempts, capacity, batch, queue_capacity, write_threads) < 1:
        raise ValueError("max_attempts, capacity, batch, queue_capacity and write_threads must be >= 1")
    t_start = time.perf_counter()
    work = WorkQueue([[-1, int(p), int(a)] for p, a in items])
    ready, decoded, judged, written = (BoundedQueue(queue_capacity) for _ in range(4))
    queues = {"ready": ready, "decode": decoded, "qc": judged, "write": written}
    busy = dict.fromkeys(STAGES, 0.0)
    st = {"steps": 0, "slot_steps": 0, "wait": 0.0, "attempts": 0}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def fail(exc):
        with lock:
            if not errors:
                errors.append(exc)
        work.abort()
        for q in queues.values():
            q.abort()

    def failed() -> bool:
        return bool(errors)

    def timed(stage, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        busy[stage] += time.perf_counter() - t0
        return out

    def occupancy() -> float:
        return st["slot_steps"] / (st["steps"] * capacity) if st["steps"] else 0.0

    def live() -> dict:
        return {"queued": work.depth(), **{k: q.depth() for k, q in queues.items()},
                "occupancy": occupancy()}

    token = [0]

    def encode_loop():
        while True:
            got = work.pop_batch(batch)
            if not got:
                break
            for it in got:
                it[0] = token[0]
                token[0] += 1
            timed("encode_text", bodies.encode, [tuple(it) for it in got])
            for it in got:
                if not ready.push(it):
                    return
        ready.close()

    def denoise_loop():
        slot_item: list = [None] * capacity
        active = 0
        while True:
            free = capacity - active
            if active == 0:
                t0 = time.perf_counter()
                joining = ready.pop_batch(free, True)
                st["wait"] += time.perf_counter() - t0
                if not joining:
                    break
            else:
                joining = ready.pop_batch(free, False) if free else []
            if failed():
                return
            joins = []
            for it in joining:
                s = slot_item.index(None)
                slot_item[s] = it
                active += 1
                joins.append((s, it[0]))
            finished = timed("denoise", bodies.step, joins)
            st["steps"] += 1
            st["slot_steps"] += active
            for s, tok in finished:
                it = slot_item[s]
                if it is None or it[0] != tok:
                    raise RuntimeError(f"step() reported slot {s} finished, which does not hold token {tok}")
                slot_item[s] = None
                active -= 1
                t0 = time.perf_counter()
                ok = decoded.push(it)
                st["wait"] += time.perf_counter() - t0
                if not ok:
                    return
        decoded.close()

    def stage_loop(src, dst, body, stage):
        while True:
            got = src.pop_batch(batch, True)
            if not got:
                break
            timed(stage, body, [it[0] for it in got])
            for it in got:
                if not dst.push(it):
                    return
        if not failed():
            dst.close()

    def write_one(tok, path):
        atomic_write_bytes(path, bodies.encode_image(tok))

    def write_loop(pool):
        while True:
            got = written.pop_batch(batch, True)
            if not got:
                break
            t0 = time.perf_counter()
            toks = [it[0] for it in got]
            paths = bodies.prepare_write(toks)
            if len(paths) != len(got):
                raise RuntimeError("prepare_write() must return one path (or None) per token")
            for f in [pool.submit(write_one, t, p) for t, p in zip(toks, paths) if p is not None]:
                f.result()
            passed = bodies.commit(toks)
            if len(passed) != len(got):
                raise RuntimeError("commit() must return one verdict per token")
            finals, settled = [], False
            for it, ok in zip(got, passed):
                nxt = next_attempt({"qc_pass": bool(ok), "attempt": it[2]}, max_attempts)
                if nxt is not None:
                    work.retry([-1, it[1], nxt])
                    finals.append(False)
                else:
                    finals.append(True)
                    settled = work.settle()
            busy["write"] += time.perf_counter() - t0
            st["attempts"] += len(got)
            bodies.done(toks, finals, live())
            if settled:
                break
        if not failed():
            work.abort()

    def guarded(fn, *args):
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller
            fail(exc)

    if items:
        with ThreadPoolExecutor(write_threads, thread_name_prefix="rv2-write") as pool:
            threads = [threading.Thread(target=guarded, args=a, daemon=True, name=f"rv2-{n}")
                       for n, a in (("encode", (encode_loop,)), ("denoise", (denoise_loop,)),
                                    ("decode", (stage_loop, decoded, judged, bodies.decode, "decode")),
                                    ("qc", (stage_loop, judged, written, bodies.judge, "qc")),
                                    ("write", (write_loop, pool)))]
            for t in threads:
                t.start()
            try:
                for t in threads:
                    while t.is_alive():
                        t.join(0.1)
            except BaseException as exc:  # noqa: BLE001 - Ctrl-C: stop the stages, then raise
                fail(exc)
                for t in threads:
                    t.join()
    if errors:
        raise errors[0]
    return {"scheduler": "python", "wall_s": time.perf_counter() - t_start, "capacity": capacity,
            "queue_capacity": queue_capacity, "steps": st["steps"], "slot_steps": st["slot_steps"],
            "occupancy": occupancy(), "denoiser_wait_s": st["wait"], "attempts": st["attempts"],
            "retries": work.retries, "busy_s": busy,
            "queue_depth_max": {k: q.max_depth for k, q in queues.items()},
            "queue_depth_mean": {k: q.mean_depth() for k, q in queues.items()}}


def native_scheduler():
    """rv2._C.run_pipeline, or None where the native module (or its scheduler) is absent."""
    m = _native.native_module()
    return getattr(m, "run_pipeline", None) if m is not None else None


def run_pipeline(bodies, items, max_attempts: int, capacity: int, batch: int,
                 queue_capacity: int, write_threads: int, native: bool | None = None) -> dict:
    """The native scheduler when built (or `native=True`), else the Python twin."""
    fn = native_scheduler()
    if native and fn is None:
        raise RuntimeError(f"the native scheduler is not built ({_native.NATIVE_ERROR})")
    if native is False or fn is None:
        fn = run_pipeline_py
    return fn(bodies, list(items), max_attempts, capacity, batch, queue_capacity, write_threads)


__all__ = ["run_pipeline", "run_pipeline_py", "native_scheduler", "BoundedQueue", "WorkQueue",
           "STAGES"]
