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
- drop([token, ...])                            (speculate only) forget these attempts;
  called by the denoiser thread (before a step) for tokens in its slots, which are then
  free, and by the write thread for the others

Items join free slots at step boundaries; retries go before fresh items. Memory
is bounded: at most `queue_capacity` items wait between two stages. The first
exception of a body stops every stage and is raised by `run_pipeline`; attempts
journaled until then stay, the rest are redone by a resumed run.

`speculate`: slots that would idle (the tail, a retry's wait for its verdict) take
attempt a+1 of a prompt whose attempt a is still in flight. Its image is the one a
retry would make (seeds are per attempt); the write stage holds it until attempt a is
journaled, then journals it if a failed and drops it if a passed. A prompt's attempts
are journaled in order, so the store and a resumed run see what they would without
speculation. Worth it where a free slot costs (nearly) nothing: a fixed-batch step (a
CUDA graph) or a small model; `wasted_slot_steps` counts the dropped work.
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
    """Fresh items in order, retries first; empty for good once every item settled.

    With `speculate`, it also hands out speculative attempts: attempt a+1 of a prompt
    whose attempt a is still in flight, when the denoiser has slots that would idle
    (`want`) and nothing else is queued. The write stage journals an attempt only once
    its predecessor failed (`status`); when a prompt settles, its speculative attempts
    are cancelled and whoever holds one drops it. queues.h has the twin."""

    def __init__(self, items, max_attempts: int = 1):
        self.fresh = collections.deque(items)
        self.retry_q: collections.deque = collections.deque()
        self.outstanding = len(self.fresh)
        self.retries = 0
        self.aborted = False
        self.cv = threading.Condition()
        self.max_attempts = max_attempts
        self.flight: dict = {}       # prompt -> [its real attempt, last attempt launched]
        self.cancelled: set = set()  # (prompt, attempt) to drop wherever it is
        self.want = self.popped = 0
        self.speculated = self.kept = 0

    def _launch(self, it):
        f = self.flight.setdefault(it[1], [it[2], it[2]])
        f[1] = max(f[1], it[2])

    def _candidate(self):
        """The speculative attempt to start: the prompt with the fewest ahead of its
        real attempt, the oldest first."""
        best = None
        for p, (real, last) in self.flight.items():
            if last + 1 < self.max_attempts and (best is None or last - real < best[1]):
                best = (p, last - real)
        if best is None:
            return None
        f = self.flight[best[0]]
        f[1] += 1
        return [-1, best[0], f[1], 0]

    def _spec_ready(self) -> bool:
        return self.want > 0 and any(last + 1 < self.max_attempts for _, last in self.flight.values())

    def pop_batch(self, n: int) -> list:
        with self.cv:
            self.cv.wait_for(lambda: self.aborted or self.outstanding == 0 or self.retry_q
                             or self.fresh or self._spec_ready())
            out = []
            if self.aborted:
                return out
            while len(out) < n and (self.retry_q or self.fresh):
                out.append((self.retry_q or self.fresh).popleft())
                self._launch(out[-1])
            while len(out) < n and self.want > 0 and not self.retry_q and not self.fresh:
                it = self._candidate()
                if it is None:
                    break
                out.append(it)
                self.want -= 1
                self.speculated += 1
            self.popped += len(out)
            return out

    def set_want(self, n: int):
        """The denoiser could take `n` more items now than are on their way to it."""
        with self.cv:
            self.want = max(0, n)
            if self.want:
                self.cv.notify_all()

    def status(self, p: int, a: int) -> str:
        """'drop' (its prompt settled), 'commit' (the prompt's real attempt) or 'hold'."""
        with self.cv:
            if (p, a) in self.cancelled:
                return "drop"
            return "commit" if self.flight[p][0] == a else "hold"

    def is_cancelled(self, p: int, a: int) -> bool:
        with self.cv:
            return (p, a) in self.cancelled

    def forget(self, p: int, a: int):
        """A cancelled attempt was dropped."""
        with self.cv:
            self.cancelled.discard((p, a))

    def resolve(self, p: int, a: int, qc_pass: bool) -> tuple[bool, bool]:
        """The retry rule after attempt a of prompt p was journaled: (final, settled all).
        A failure re-queues the next attempt, unless it was started speculatively."""
        nxt = next_attempt({"qc_pass": qc_pass, "attempt": a}, self.max_attempts)
        with self.cv:
            if nxt is None:
                last = self.flight.pop(p)[1]
                self.cancelled.update((p, b) for b in range(a + 1, last + 1))
                self.outstanding -= 1
                self.cv.notify_all()
                return True, self.outstanding == 0
            self.retries += 1
            f = self.flight[p]
            f[0] = nxt
            if f[1] >= nxt:
                self.kept += 1
            else:
                f[1] = nxt
                self.retry_q.append([-1, p, nxt, 0])
                self.cv.notify_all()
            return False, False

    def abort(self):
        with self.cv:
            self.aborted = True
            self.cv.notify_all()

    def depth(self) -> int:
        return len(self.retry_q) + len(self.fresh)


def run_pipeline_py(bodies, items, max_attempts: int, capacity: int, batch: int,
                    queue_capacity: int, write_threads: int, speculate: bool = False) -> dict:
    """Python twin of `rv2._C.run_pipeline` (csrc/scheduler/pipeline.cpp)."""
    if min(max_attempts, capacity, batch, queue_capacity, write_threads) < 1:
        raise ValueError("max_attempts, capacity, batch, queue_capacity and write_threads must be >= 1")
    if speculate and not callable(getattr(bodies, "drop", None)):
        raise ValueError("speculate needs a drop() stage body")
    t_start = time.perf_counter()
    # an item: [token, prompt, attempt, denoiser steps it took]
    work = WorkQueue([[-1, int(p), int(a), 0] for p, a in items], max_attempts)
    ready, decoded, judged, written = (BoundedQueue(queue_capacity) for _ in range(4))
    queues = {"ready": ready, "decode": decoded, "qc": judged, "write": written}
    busy = dict.fromkeys(STAGES, 0.0)
    st = {"steps": 0, "slot_steps": 0, "wait": 0.0, "attempts": 0, "dropped": 0, "wasted": 0}
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
                "occupancy": occupancy(), "speculated": work.speculated,
                "speculation_dropped": st["dropped"]}

    def drop(its):
        """Forget cancelled speculative attempts (called by the stage holding them)."""
        if its:
            bodies.drop([it[0] for it in its])
            for it in its:
                work.forget(it[1], it[2])
            with lock:  # the denoiser and the write stage both drop
                st["dropped"] += len(its)
                st["wasted"] += sum(it[3] for it in its)

    token = [0]

    def encode_loop():
        while True:
            got = work.pop_batch(batch)
            if not got:
                break
            for it in got:
                it[0] = token[0]
                token[0] += 1
            timed("encode_text", bodies.encode, [tuple(it[:3]) for it in got])
            for it in got:
                if not ready.push(it):
                    return
        ready.close()

    def denoise_loop():
        slot_item: list = [None] * capacity
        active = joined = 0
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
            joined += len(joining)
            if speculate:   # cancelled attempts leave (or never take) their slots
                gone = [it for it in joining if work.is_cancelled(it[1], it[2])]
                joining = [it for it in joining if it not in gone]
                for s, it in enumerate(slot_item):
                    if it is not None and work.is_cancelled(it[1], it[2]):
                        gone.append(it)
                        slot_item[s] = None
                        active -= 1
                drop(gone)
            joins = []
            for it in joining:
                s = slot_item.index(None)
                slot_item[s] = it
                active += 1
                joins.append((s, it[0]))
            if speculate:
                work.set_want(capacity - active - (work.popped - joined))
            if active == 0:
                continue
            finished = timed("denoise", bodies.step, joins)
            st["steps"] += 1
            st["slot_steps"] += active
            for it in slot_item:
                if it is not None:
                    it[3] += 1
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
            if speculate:   # slots that nothing on its way will fill
                work.set_want(capacity - active - (work.popped - joined))
        decoded.close()

    def stage_loop(src, dst, body, stage):
        while True:
            got = src.pop_batch(batch, True)
            if not got:
                break
            toks = [it[0] for it in got if not (speculate and work.is_cancelled(it[1], it[2]))]
            if toks:
                timed(stage, body, toks)
            for it in got:
                if not dst.push(it):
                    return
        if not failed():
            dst.close()

    def write_one(tok, path):
        atomic_write_bytes(path, bodies.encode_image(tok))

    def journal(pool, got) -> bool:
        """Write and journal `got` (real attempts, in order), then apply the retry rule;
        whether no prompt is left."""
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
            final, last = work.resolve(it[1], it[2], bool(ok))
            finals.append(final)
            settled = settled or last
        busy["write"] += time.perf_counter() - t0
        st["attempts"] += len(got)
        bodies.done(toks, finals, live())
        return settled

    def write_loop(pool):
        held: dict = {}    # (prompt, attempt) -> item: speculative, its predecessor unjudged
        settled = False
        while True:
            got = written.pop_batch(batch, True)
            if not got:
                break
            while got:
                real, gone = [], []
                for it in got:
                    status = work.status(it[1], it[2]) if speculate else "commit"
                    if status == "hold":
                        held[(it[1], it[2])] = it
                    else:
                        (real if status == "commit" else gone).append(it)
                drop(gone)
                if real:
                    settled = journal(pool, real) or settled
                # verdicts just journaled made held attempts real, or cancelled them
                got = [held.pop(k) for k in list(held) if work.status(*k) != "hold"]
            if settled:
                work.abort()    # wakes the encoder: nothing is left to start
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
    steps = st["steps"]
    return {"scheduler": "python", "wall_s": time.perf_counter() - t_start, "capacity": capacity,
            "queue_capacity": queue_capacity, "steps": steps, "slot_steps": st["slot_steps"],
            "occupancy": occupancy(), "denoiser_wait_s": st["wait"], "attempts": st["attempts"],
            "retries": work.retries, "busy_s": busy,
            "queue_depth_max": {k: q.max_depth for k, q in queues.items()},
            "queue_depth_mean": {k: q.mean_depth() for k, q in queues.items()},
            "speculated": work.speculated, "speculation_kept": work.kept,
            "speculation_dropped": st["dropped"], "wasted_slot_steps": st["wasted"],
            "useful_occupancy": (st["slot_steps"] - st["wasted"]) / (steps * capacity) if steps else 0.0}


def native_scheduler():
    """rv2._C.run_pipeline, or None where the native module (or its scheduler) is absent."""
    m = _native.native_module()
    return getattr(m, "run_pipeline", None) if m is not None else None


def run_pipeline(bodies, items, max_attempts: int, capacity: int, batch: int,
                 queue_capacity: int, write_threads: int, native: bool | None = None,
                 speculate: bool = False) -> dict:
    """The native scheduler when built (or `native=True`), else the Python twin."""
    fn = native_scheduler()
    if native and fn is None:
        raise RuntimeError(f"the native scheduler is not built ({_native.NATIVE_ERROR})")
    if native is False or fn is None:
        fn = run_pipeline_py
    return fn(bodies, list(items), max_attempts, capacity, batch, queue_capacity, write_threads,
              speculate)


__all__ = ["run_pipeline", "run_pipeline_py", "native_scheduler", "BoundedQueue", "WorkQueue",
           "STAGES"]
