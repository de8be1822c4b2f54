"""The pipeline scheduler (native and Python twin) on simulated stages that sleep:
overlap, continuous admission, retry order, backpressure, errors."""
from __future__ import annotations

import threading
import time

import pytest
from rv2 import _native
from rv2.runtime.pipeline_scheduler import native_scheduler, run_pipeline

BACKENDS = [False, pytest.param(True, marks=pytest.mark.skipif(
    native_scheduler() is None, reason=f"rv2._C has no scheduler ({_native.NATIVE_ERROR})"))]
IDS = ["python", "native"]


class SimBodies:
    """Stages that sleep `sleeps[stage]` seconds per call; an item needs `n_steps`
    denoiser steps; `fails` holds the (prompt, attempt) pairs QC rejects."""

    def __init__(self, n_steps=1, sleeps=None, fails=(), raise_in=None, raise_at=1, out_dir=None):
        self.n_steps, self.sleeps = n_steps, dict(sleeps or {})
        self.fails, self.raise_in, self.raise_at, self.out_dir = set(fails), raise_in, raise_at, out_dir
        self.items, self.slots = {}, {}
        self.calls = {}
        self.encoded, self.committed, self.step_log, self.dropped = [], [], [], []
        self.max_live = 0
        self.lives = []
        self.lock = threading.Lock()

    def _enter(self, stage):
        self.calls[stage] = self.calls.get(stage, 0) + 1
        if stage == self.raise_in and self.calls[stage] == self.raise_at:
            raise RuntimeError(f"{stage} failed")
        time.sleep(self.sleeps.get(stage, 0.0))

    def encode(self, batch):
        self._enter("encode")
        for tok, p, a in batch:
            self.items[tok] = (p, a)
            self.encoded.append((p, a))
        self.max_live = max(self.max_live, len(self.items))

    def step(self, joins):
        self._enter("step")
        for slot, tok in joins:
            assert slot not in self.slots, "joined a busy slot"
            self.slots[slot] = [tok, 0]
        self.step_log.append({s: v[1] for s, v in self.slots.items()})
        done = []
        for slot in sorted(self.slots):
            self.slots[slot][1] += 1
            if self.slots[slot][1] == self.n_steps:
                done.append((slot, self.slots.pop(slot)[0]))
        return done

    def decode(self, tokens):
        self._enter("decode")

    def judge(self, tokens):
        self._enter("judge")

    def prepare_write(self, tokens):
        if self.out_dir is None:
            return [None] * len(tokens)
        return [str(self.out_dir / f"{self.items[t][0]}-{self.items[t][1]}.bin") for t in tokens]

    def encode_image(self, token):
        self._enter("encode_image")
        return f"{self.items[token]}".encode()

    def commit(self, tokens):
        self._enter("commit")
        out = []
        for t in tokens:
            self.committed.append(self.items[t])
            out.append(self.items[t] not in self.fails)
        return out

    def done(self, tokens, finals, live):
        assert set(live) >= {"ready", "decode", "qc", "write", "occupancy", "speculated",
                             "speculation_dropped"}
        self.lives.append(live)
        for t in tokens:
            del self.items[t]

    def drop(self, tokens):
        self._enter("drop")
        for t in tokens:
            self.dropped.append(self.items.pop(t))
            for slot, (tok, _) in list(self.slots.items()):
                if tok == t:
                    del self.slots[slot]


def _run(bodies, n, native, max_attempts=1, capacity=1, batch=1, queue=2, threads=1,
         speculate=False):
    return run_pipeline(bodies, [(p, 0) for p in range(n)], max_attempts, capacity, batch, queue,
                        threads, native=native, speculate=speculate)


@pytest.mark.parametrize("native", BACKENDS, ids=IDS)
def test_stages_overlap(native):
    """Wall time follows the slowest stage x items, not the sum of the stages."""
    n, slow, fast = 10, 0.06, 0.03
    b = SimBodies(sleeps={"encode": fast, "step": slow, "decode": fast, "judge": fast, "commit": fast})
    t0 = time.perf_counter()
    st = _run(b, n, native)
    wall = time.perf_counter() - t0
    serial = n * (slow + 4 * fast)
    assert len(b.committed) == n
    assert wall >= n * slow
    assert wall < n * slow * 1.3 + 4 * fast + 0.15, (wall, serial)
    assert wall < 0.6 * serial
    assert st["busy_s"]["denoise"] == pytest.approx(n * slow, rel=0.5)


@pytest.mark.parametrize("native", BACKENDS, ids=IDS)
def test_items_join_free_slots_at_step_boundaries(native):
    b = SimBodies(n_steps=3, sleeps={"encode": 0.015, "step": 0.01})  # items arrive one by one
    st = _run(b, 7, native, capacity=3, batch=1, queue=8)
    assert len(b.committed) == 7
    # some step ran slots at different phases: an item joined while others were mid-way
    assert any(len(set(s.values())) > 1 for s in b.step_log)
    # every item got exactly n_steps steps, and slots were never over-filled
    assert all(len(s) <= 3 for s in b.step_log)
    assert st["slot_steps"] == 7 * 3
    assert st["occupancy"] == pytest.approx(21 / (3 * st["steps"]))
    # when every item is there at once: 6 items x 3 steps fill 3 slots (a wake-up may start one short)
    b = SimBodies(n_steps=3)
    st = _run(b, 6, native, capacity=3, batch=6, queue=8)
    assert st["slot_steps"] == 18 and st["steps"] <= 6 + 2


@pytest.mark.parametrize("native", BACKENDS, ids=IDS)
def test_retries_follow_the_rule_and_go_first(native):
    fails = {(0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)}
    b = SimBodies(fails=fails, sleeps={"commit": 0.005})
    st = _run(b, 24, native, max_attempts=3, queue=1)
    attempts = {}
    for p, a in b.committed:
        attempts.setdefault(p, []).append(a)
    assert attempts[0] == [0, 1] and attempts[1] == [0, 1, 2] and attempts[2] == [0, 1, 2]
    assert all(v == [0] for p, v in attempts.items() if p > 2)
    assert len(b.encoded) == len(set(b.encoded)) == 24 + 5
    assert st["retries"] == 5 and st["attempts"] == 29
    # retries are admitted before the fresh items still queued
    order = b.encoded.index
    assert order((2, 2)) < order((23, 0))
    assert order((0, 1)) < order((16, 0))


@pytest.mark.parametrize("native", BACKENDS, ids=IDS)
def test_backpressure_bounds_items_in_flight(native, tmp_path):
    """Slow writes: the encoder is held back, so live items stay bounded by the queues."""
    b = SimBodies(sleeps={"encode_image": 0.01}, out_dir=tmp_path)
    st = _run(b, 40, native, capacity=2, batch=2, queue=2, threads=2)
    bound = 4 * 2 + 2 + 4 * 2   # four queues, the slots, a batch in the hands of four stages
    assert b.max_live <= bound < 40
    assert all(v <= 2 for v in st["queue_depth_max"].values())
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 40 and (tmp_path / "7-0.bin").read_bytes() == b"(7, 0)"


@pytest.mark.parametrize("native", BACKENDS, ids=IDS)
@pytest.mark.parametrize("stage", ["encode", "step", "judge", "encode_image", "commit"])
def test_a_stage_raising_stops_the_run(native, stage, tmp_path):
    before = threading.active_count()
    b = SimBodies(n_steps=2, raise_in=stage, raise_at=2, out_dir=tmp_path,
                  sleeps={"commit": 0.002})
    with pytest.raises(RuntimeError, match=f"{stage} failed"):
        _run(b, 30, native, capacity=2, batch=2, queue=2)
    assert len(b.committed) < 30
    assert threading.active_count() == before


@pytest.mark.parametrize("native", BACKENDS, ids=IDS)
def test_no_items(native):
    st = _run(SimBodies(), 0, native)
    assert st["attempts"] == 0 and st["steps"] == 0


@pytest.mark.parametrize("native", BACKENDS, ids=IDS)
def test_bad_settings_are_refused(native):
    with pytest.raises(ValueError, match="capacity"):
        run_pipeline(SimBodies(), [(0, 0)], 1, 0, 1, 1, 1, native=native)


@pytest.mark.parametrize("native", BACKENDS, ids=IDS)
def test_a_failed_write_is_an_oserror_with_its_errno_and_file(native, tmp_path):
    """The native write pool's failures reach Python as OSError (errno, file), as the twin's
    do, so a full disk is told by its errno (rv2.files.is_disk_full), not by message text."""
    import errno

    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")  # the images' folder is a file: every write fails
    b = SimBodies(out_dir=blocker)
    with pytest.raises(OSError) as info:
        _run(b, 3, native)
    assert info.value.errno in (errno.ENOTDIR, errno.EEXIST)
    assert str(blocker) in str(info.value.filename)


def _attempts(committed):
    out = {}
    for p, a in committed:
        out.setdefault(p, []).append(a)
    return out


@pytest.mark.parametrize("native", BACKENDS, ids=IDS)
def test_speculation_fills_idle_slots_and_journals_what_a_plain_run_does(native):
    """Prompt 0 fails three times, prompt 1 once: without speculation their retries run in
    a nearly empty batch, one after another; with it, idle slots start the next attempts
    early. The journal gets the same attempts in the same per-prompt order, the attempts
    a pass made needless are dropped, and every payload is released."""
    fails = {(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)}
    sleeps = {"step": 0.004, "decode": 0.01, "judge": 0.01}
    runs = {}
    for spec in (False, True):
        b = SimBodies(n_steps=4, fails=fails, sleeps=sleeps)
        runs[spec] = (b, _run(b, 6, native, max_attempts=4, capacity=4, batch=2, queue=4,
                              speculate=spec))
    (b0, st0), (b1, st1) = runs[False], runs[True]
    want = {0: [0, 1, 2, 3], 1: [0, 1, 2], 2: [0], 3: [0], 4: [0], 5: [0]}
    assert _attempts(b0.committed) == _attempts(b1.committed) == want
    assert st0["retries"] == st1["retries"] == 5 and st0["attempts"] == st1["attempts"] == 11
    assert st0["speculated"] == st0["wasted_slot_steps"] == 0 and not b0.dropped
    assert st1["speculated"] > 0 and st1["speculated"] == st1["speculation_kept"] + st1["speculation_dropped"]
    assert st1["speculation_kept"] >= 3 and len(b1.dropped) == st1["speculation_dropped"]
    assert all(a > 0 for _, a in b1.dropped)
    # the dropped attempts come after the attempt that passed, for prompts 1-5 only
    assert all(a > want[p][-1] for p, a in b1.dropped)
    assert b1.items == {} and b1.slots == {}
    # the progress bar's figures (live) count the speculation as it goes
    assert max(v["speculated"] for v in b1.lives) > 0 and max(v["speculated"] for v in b0.lives) == 0
    # the committed attempts took n_steps each; the rest of the slot steps were dropped work
    assert st1["slot_steps"] - st1["wasted_slot_steps"] == 11 * 4
    assert st1["useful_occupancy"] == pytest.approx(44 / (st1["steps"] * 4))
    assert st1["occupancy"] > st0["occupancy"] and st1["steps"] < st0["steps"]
    # a speculative attempt never started before the prompt's attempt it follows
    order = b1.encoded.index
    assert all(order((p, a - 1)) < order((p, a)) for p, a in b1.encoded if a > 0)


@pytest.mark.parametrize("native", BACKENDS, ids=IDS)
def test_speculation_needs_a_drop_body(native):
    class NoDrop(SimBodies):
        drop = None
    with pytest.raises(ValueError, match="drop"):
        _run(NoDrop(), 2, native, max_attempts=2, speculate=True)


@pytest.mark.parametrize("native", BACKENDS, ids=IDS)
@pytest.mark.parametrize("stage", ["step", "judge", "drop", "commit"])
def test_a_stage_raising_under_speculation_stops_the_run(native, stage):
    before = threading.active_count()
    fails = {(p, a) for p in range(8) for a in range(3)}
    b = SimBodies(n_steps=2, fails=fails - {(p, 1) for p in range(8)}, raise_in=stage, raise_at=2,
                  sleeps={"judge": 0.003})
    with pytest.raises(RuntimeError, match=f"{stage} failed"):
        _run(b, 8, native, max_attempts=4, capacity=4, batch=2, speculate=True)
    assert threading.active_count() == before


@pytest.mark.parametrize("native", BACKENDS, ids=IDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_speculation_keeps_the_retry_rule_on_random_verdicts(native, seed):
    """Random verdicts, more slots than the queues can keep busy: each prompt's journal
    is attempts 0..k, k its first pass (or the last attempt), nothing twice, nothing left."""
    import random

    rng = random.Random(seed)
    n, max_attempts = 20, 4
    fails = {(p, a) for p in range(n) for a in range(max_attempts) if rng.random() < 0.55}
    b = SimBodies(n_steps=rng.choice([1, 3]), fails=fails,
                  sleeps={"step": 0.001, "decode": 0.002, "judge": 0.003})
    st = _run(b, n, native, max_attempts=max_attempts, capacity=6, batch=2, queue=2,
              speculate=True)
    got = _attempts(b.committed)
    for p in range(n):
        k = next((a for a in range(max_attempts) if (p, a) not in fails), max_attempts - 1)
        assert got[p] == list(range(k + 1)), (p, got[p])
    assert len(b.committed) == len(set(b.committed)) == st["attempts"]
    assert st["speculated"] == st["speculation_kept"] + st["speculation_dropped"] > 0
    assert b.items == {} and b.slots == {}
    assert not set(b.dropped) & set(b.committed)


@pytest.mark.parametrize("native", BACKENDS, ids=IDS)
def test_a_cancelled_attempt_leaves_its_slot_at_the_next_step(native):
    """One prompt, long trajectories, quick verdicts: attempt 0 passes while the
    speculative attempt 1 is mid-way; the denoiser drops it at the next step boundary
    (fewer than n_steps taken), and decode and QC never see it."""

    class Seen(SimBodies):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.judged, self.in_slot = [], []

        def judge(self, tokens):
            self.judged += [self.items[t] for t in tokens]

        def drop(self, tokens):
            self.in_slot += [any(v[0] == t for v in self.slots.values()) for t in tokens]
            super().drop(tokens)

    n_steps = 12   # a slow encoder: the speculative attempts join steps behind attempt 0
    b = Seen(n_steps=n_steps, sleeps={"step": 0.01, "encode": 0.035})
    st = _run(b, 1, native, max_attempts=3, capacity=3, batch=1, queue=2, speculate=True)
    assert b.committed == [(0, 0)] and b.judged == [(0, 0)]
    assert st["speculated"] >= 1 and st["speculation_dropped"] == st["speculated"]
    assert b.in_slot and all(b.in_slot)
    # every dropped attempt started after attempt 0 and left before finishing its trajectory
    assert 0 < st["wasted_slot_steps"] < st["speculated"] * n_steps
    assert st["steps"] < n_steps + 4
    assert b.items == {} and b.slots == {}
