"""The dynamic batcher on its own: gathering, Triton's preferred sizes, instances, one loop
wake-up per batch, deadlines, failures, and the batch-size tuning."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from rv2.serve.batcher import Batcher
from rv2.serve.protocol import RequestError
from rv2.serve.service import best_batch_size, time_batch_sizes


class Backend:
    """Records each call's batch size; `gate` holds calls until it is set."""

    def __init__(self, gate: threading.Event | None = None, fail: bool = False):
        self.sizes: list[int] = []
        self.inputs: list[np.ndarray] = []
        self.gate = gate
        self.fail = fail
        self.entered = threading.Semaphore(0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.sizes.append(len(x))
        self.inputs.append(x)
        self.entered.release()
        if self.gate is not None:
            assert self.gate.wait(30)
        if self.fail:
            raise ValueError("backend exploded")
        return x.reshape(len(x), -1)[:, :2] * 2


def rows(n: int, start: float = 0.0) -> np.ndarray:
    return np.arange(start, start + 4 * n, dtype=np.float32).reshape(n, 4)


async def _entered(backend: Backend, n: int = 1) -> None:
    loop = asyncio.get_running_loop()
    for _ in range(n):
        assert await loop.run_in_executor(None, backend.entered.acquire, True, 30)


def test_requests_queued_while_a_batch_runs_form_the_next_batch_and_get_their_rows():
    async def main():
        gate = threading.Event()
        be = Backend(gate)
        b = Batcher(be, max_batch_size=8)
        first = b.submit(rows(1))
        await _entered(be)                     # the first runs alone, held by the gate
        rest = [b.submit(rows(n, 100 * i)) for i, n in enumerate((1, 2, 3), 1)]
        gate.set()
        results = await asyncio.gather(first, *rest)
        b.close()
        return be, results

    be, results = asyncio.run(main())
    assert be.sizes == [1, 6]
    for res, (n, start) in zip(results[1:], ((1, 100), (2, 200), (3, 300))):
        np.testing.assert_array_equal(res.probs, rows(n, start)[:, :2] * 2)
        assert res.batch_size == 6 and res.queue_s >= 0 and res.compute_s >= 0


def test_preferred_batch_sizes_cut_the_queue_as_triton_does():
    """Largest preferred size the queued rows reach; the remainder as one batch."""
    async def main():
        gate = threading.Event()
        be = Backend(gate)
        b = Batcher(be, max_batch_size=8, preferred_batch_size=(2, 4))
        first = b.submit(rows(1))
        await _entered(be)
        rest = [b.submit(rows(1)) for _ in range(7)]
        gate.set()
        await asyncio.gather(first, *rest)
        b.close()
        return be.sizes

    assert asyncio.run(main()) == [1, 4, 2, 1]


def test_results_reach_the_loop_in_one_wakeup_per_batch():
    async def main():
        loop = asyncio.get_running_loop()
        calls = []
        real = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda *a, **k: (calls.append(a[0]), real(*a, **k))[1]
        gate = threading.Event()
        be = Backend(gate)
        b = Batcher(be, max_batch_size=8)
        first = b.submit(rows(1))
        await _entered(be)
        rest = [b.submit(rows(1)) for _ in range(5)]
        gate.set()
        await asyncio.gather(first, *rest)
        b.close()
        return be.sizes, [c for c in calls if getattr(c, "__name__", "") == "_deliver"]

    sizes, deliveries = asyncio.run(main())
    assert sizes == [1, 5] and len(deliveries) == 2


def test_two_instances_run_two_batches_at_once():
    barrier = threading.Barrier(2, timeout=20)

    def run(x):
        barrier.wait()  # both calls must be in the backend together
        return np.zeros((len(x), 2), np.float32)

    async def main():
        b = Batcher(run, max_batch_size=1, instances=2)
        out = await asyncio.gather(b.submit(rows(1)), b.submit(rows(1)))
        b.close()
        return out

    assert [r.batch_size for r in asyncio.run(main())] == [1, 1]


@pytest.mark.parametrize("native", [True, False], ids=["native", "twin"])
def test_rows_are_copied_once_into_the_batch_and_non_finite_requests_are_refused(monkeypatch, native):
    import rv2.serve.batcher as batcher_mod
    from rv2 import _native

    if native and not _native.features()["copy_finite"]:
        pytest.skip("rv2._C without copy_finite")
    if not native:
        monkeypatch.setattr(batcher_mod, "copy_finite", _native.copy_finite_py)

    async def main():
        gate = threading.Event()
        be = Backend(gate)
        b = Batcher(be, max_batch_size=8)
        first = b.submit(rows(1, -10))
        await _entered(be)  # held at the gate while the next five queue up
        body = bytes(rows(1).tobytes())
        view = np.frombuffer(memoryview(body)[0:16], dtype="<f4").reshape(1, 4)  # read-only
        bad = [rows(1, 20), rows(2, 30), rows(1, 40)]
        bad[0][0, 3], bad[1][1, 0], bad[2][0, 1] = np.nan, np.inf, -np.inf
        futs = [b.submit(view), b.submit(bad[0]), b.submit(rows(2, 60)), b.submit(bad[1]),
                b.submit(bad[2]), b.submit(rows(1, 90))]
        gate.set()
        out = await asyncio.gather(first, *futs, return_exceptions=True)
        b.close()
        return be, view, out

    be, view, out = asyncio.run(main())
    good = np.concatenate([rows(1), rows(2, 60), rows(1, 90)])
    assert be.sizes == [1, 4]  # the three refused requests' rows never reach the backend
    batch = be.inputs[1]
    assert batch.flags.writeable and batch.flags.c_contiguous and batch.dtype == np.float32
    assert not np.shares_memory(batch, view)
    np.testing.assert_array_equal(batch, good)
    for i in (2, 4, 5):
        assert isinstance(out[i], RequestError) and out[i].status == 400 and "NaN or infinity" in str(out[i])
    for i, want in ((1, rows(1)), (3, rows(2, 60)), (6, rows(1, 90))):
        np.testing.assert_array_equal(out[i].probs, want[:, :2] * 2)
        assert out[i].batch_size == 4


def test_a_lone_writable_request_runs_as_is_and_a_non_finite_one_never_runs():
    async def main():
        be = Backend()
        b = Batcher(be, max_batch_size=4)
        own = rows(1, 5)
        for bad in (np.nan, np.inf):  # writable, and a read-only view
            x = rows(1)
            x[0, 0] = bad
            for arr in (x, np.frombuffer(x.tobytes(), np.float32).reshape(x.shape)):
                with pytest.raises(RequestError, match="NaN or infinity"):
                    await b.submit(arr)
        ok = await b.submit(own)
        view = np.frombuffer(rows(1, 7).tobytes(), np.float32).reshape(1, 4)  # read-only
        await b.submit(view)
        b.close()
        return be, ok, own, view

    be, ok, own, view = asyncio.run(main())
    assert be.sizes == [1, 1] and ok.batch_size == 1
    assert be.inputs[0] is own  # checked in place, not copied
    assert be.inputs[1].flags.writeable and not np.shares_memory(be.inputs[1], view)  # copied once
    np.testing.assert_array_equal(be.inputs[1], view)


def test_deadline_cancel_and_backend_failure():
    async def main():
        gate = threading.Event()
        be = Backend(gate)
        b = Batcher(be, max_batch_size=8)
        first = b.submit(rows(1))
        await _entered(be)
        late = b.submit(rows(1), deadline=time.monotonic() - 1)   # expired while queued
        gone = b.submit(rows(1))
        gone.cancel()                                             # the client left
        kept = b.submit(rows(1))
        gate.set()
        await asyncio.gather(first, kept)
        with pytest.raises(RequestError) as late_err:
            await late
        b.close()

        bad = Batcher(Backend(fail=True), max_batch_size=8)
        with pytest.raises(RequestError) as fail_err:
            await bad.submit(rows(2))
        bad.close()
        return be.sizes, late_err.value, fail_err.value

    sizes, late, fail = asyncio.run(main())
    assert sizes == [1, 1]  # neither the expired nor the cancelled request ran
    assert late.status == 503 and "timed out" in str(late)
    assert fail.status == 500 and "backend exploded" in str(fail)


def test_full_queue_and_closed_batcher_refuse_with_503():
    async def main():
        gate = threading.Event()
        be = Backend(gate)
        b = Batcher(be, max_batch_size=1, max_queue_size=2)
        first = b.submit(rows(1))
        await _entered(be)
        queued = [b.submit(rows(1)), b.submit(rows(1))]
        with pytest.raises(RequestError) as full:
            b.submit(rows(1))
        gate.set()
        await asyncio.gather(first, *queued)
        b.close()
        with pytest.raises(RequestError) as closed:
            b.submit(rows(1))
        return full.value, closed.value

    full, closed = asyncio.run(main())
    assert full.status == 503 and full.retry_after == 1 and "queue full" in str(full)
    assert closed.status == 503 and "shutting down" in str(closed)


def test_bad_knobs_are_refused():
    with pytest.raises(RequestError, match="instances"):
        Batcher(Backend(), max_batch_size=4, instances=0)
    with pytest.raises(RequestError, match="preferred_batch_size"):
        Batcher(Backend(), max_batch_size=4, preferred_batch_size=(8,))


# ---------------------------------------------------------------- tuning

def test_best_batch_size_is_the_smallest_within_the_margin():
    assert best_batch_size({1: 0.080, 2: 0.095, 4: 0.093, 8: 0.100}) == 1   # CPU: batching loses
    assert best_batch_size({1: 0.010, 2: 0.005, 4: 0.0026, 8: 0.0013}) == 8  # GPU-like
    assert best_batch_size({1: 0.010, 2: 0.0060, 4: 0.0058, 8: 0.0057}) == 2


def test_time_batch_sizes_runs_each_size_and_reports_seconds_per_row():
    seen = []

    def run(x):
        seen.append(len(x))
        time.sleep(0.004)  # a fixed cost per call: per row it halves as the batch doubles

    per_row = time_batch_sizes(run, np.zeros((1, 3), np.float32), 6, repeats=2)
    assert list(per_row) == [1, 2, 4, 6]
    assert seen == [1, 1, 1, 2, 2, 2, 4, 4, 4, 6, 6, 6]
    assert per_row[6] < per_row[1] / 3
    assert best_batch_size(per_row) == 6
