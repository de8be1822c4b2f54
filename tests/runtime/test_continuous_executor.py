"""The continuous-batching executors (native scheduler and its Python twin) against
the in-process executor: same images (1e-5, fp32 CPU), same store records; on a GPU,
with CUDA stage streams and the denoiser graph against without."""
from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch
from gen_helpers import mean_qc, prompts_table, tiny
from rv2 import _native
from rv2.generate.config import GenerateConfig
from rv2.generate.executor import InProcessExecutor, next_attempt
from rv2.generate.pipeline import generate_dataset
from rv2.generate.stages import StageRunner
from rv2.runtime.continuous_executor import ContinuousExecutor
from rv2.runtime.pipeline_scheduler import native_scheduler

BACKENDS = ["python", pytest.param("native", marks=pytest.mark.skipif(
    native_scheduler() is None, reason=f"rv2._C has no scheduler ({_native.NATIVE_ERROR})"))]


@pytest.fixture(scope="module")
def comp():
    return tiny(0)


def _cfg(steps=3, guidance=3.0, max_attempts=3, batch=3):
    cfg = GenerateConfig()
    cfg.sampler.steps, cfg.sampler.guidance, cfg.sampler.device = steps, guidance, "cpu"
    cfg.batch_size, cfg.max_attempts = batch, max_attempts
    return cfg


class _Spy:
    """Records every image judged, by (prompt, attempt): the float images both
    executors hand to QC."""

    def __init__(self):
        self.images = {}
        self._orig = StageRunner.judge

    def __enter__(self):
        spy = self

        def judge(runner, items, images):
            for it, img in zip(items, images):
                spy.images[tuple(it)] = img.detach().clone()
            return spy._orig(runner, items, images)

        StageRunner.judge = judge
        return self

    def __exit__(self, *exc):
        StageRunner.judge = self._orig


class _PassSome:
    """QC passes prompt i's attempt i % 3 (prompts 0, 3, 6 at once, 1 and 4 on their
    first retry, ...), so runs mix passes and retries; the toy QC alone rejects all."""

    def __init__(self):
        self._orig = StageRunner.judge

    def __enter__(self):
        orig = self._orig

        def judge(runner, items, images):
            verdicts = orig(runner, items, images)
            for (pid, a), v in zip(items, verdicts):
                if a == int(pid[1:5]) % 3:
                    v["qc_pass"], v["qc_fail_reasons"] = True, ""
            return verdicts

        StageRunner.judge = judge
        return self

    def __exit__(self, *exc):
        StageRunner.judge = self._orig


def _journal(store):
    return {(r["prompt_id"], r["attempt"]): r for r in
            (json.loads(x) for x in (store / "journal.jsonl").read_text().splitlines())}


def _assert_same_records(a: dict, b: dict):
    """Equal in content: same attempts, verdicts and fields; QC outputs to float
    rounding (the denoiser ran in other batch groupings, and the stand-in QC
    amplifies 1e-6 differences of the images); file names equal."""
    assert a.keys() == b.keys()
    for key in a:
        ra, rb = dict(a[key]), dict(b[key])
        pa, pb = ra.pop("path"), rb.pop("path")
        assert (pa is None) == (pb is None) and (pa is None or pa.split("/")[-1] == pb.split("/")[-1])
        assert ra.keys() == rb.keys()
        for k in ra:
            if isinstance(ra[k], float) and ra[k] != ra[k]:
                assert rb[k] != rb[k], (key, k)   # NaN (unjudged, missing label) on both
            elif isinstance(ra[k], float) and k.startswith("qc_"):
                assert ra[k] == pytest.approx(rb[k], abs=1e-3), (key, k)
            else:
                assert ra[k] == rb[k], (key, k, ra[k], rb[k])


@pytest.mark.parametrize("speculate", [False, True], ids=["plain", "speculate"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_images_and_records_equal_inprocess(backend, speculate, comp, tmp_path):
    """With speculation too: the attempts it dropped were judged (so the spy saw them),
    but the journal and the image files hold exactly what the in-process run wrote."""
    df = prompts_table(7, seed=2)
    cfg = _cfg()
    with _PassSome(), _Spy() as ref:
        generate_dataset(df, None, tmp_path / "in", cfg, qc_models=mean_qc(), components=comp,
                         executor=InProcessExecutor(3), progress=False)
    # speculation fills slots that would idle: more slots than prompts make some
    ex = ContinuousExecutor(capacity=10 if speculate else 2, batch_size=2, backend=backend,
                            speculate=speculate)
    with _PassSome(), _Spy() as got:
        s = generate_dataset(df, None, tmp_path / "cb", cfg, qc_models=mean_qc(), components=comp,
                             executor=ex, progress=False)
    sch = s["this_run"]["scheduler"]
    dropped = set(got.images) - set(ref.images)
    assert len(dropped) <= sch["speculation_dropped"]
    assert all(a > 0 for _, a in dropped)
    if speculate:
        assert sch["speculation_kept"] > 0 and sch["speculation_dropped"] > 0
        assert sch["speculated"] == sch["speculation_kept"] + sch["speculation_dropped"]
        assert sch["useful_slot_occupancy"] <= sch["slot_occupancy"]
        got.images = {k: v for k, v in got.images.items() if k not in dropped}
    else:
        assert not dropped and sch["speculated"] == 0
    assert got.images.keys() == ref.images.keys()
    assert any(a > 0 for _, a in ref.images), "the test needs retries"
    for key, img in ref.images.items():
        torch.testing.assert_close(got.images[key], img, rtol=0, atol=1e-5)
    _assert_same_records(_journal(tmp_path / "in"), _journal(tmp_path / "cb"))
    # the images on disk decode to the same pixels (uint8 rounding of equal floats)
    for key, r in _journal(tmp_path / "in").items():
        if r["qc_pass"]:
            from PIL import Image

            a = np.asarray(Image.open(tmp_path / "in" / r["path"]))
            b = np.asarray(Image.open(tmp_path / "cb" / _journal(tmp_path / "cb")[key]["path"]))
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert s["executor"] == backend and sch["scheduler"] == backend
    assert sch["slots"] == ex.capacity and 0 < sch["slot_occupancy"] <= 1
    assert set(sch["stage_busy_s"]) == {"encode_text", "denoise", "decode", "qc", "write"}
    assert sch["retries"] == sum(1 for _, a in ref.images if a > 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_guidance_and_with_a_full_last_batch(backend, comp, tmp_path):
    df = prompts_table(4, seed=5)
    cfg = _cfg(steps=2, guidance=1.0, max_attempts=1)
    with _Spy() as ref:
        generate_dataset(df, None, tmp_path / "in", cfg, qc_models=None, components=comp,
                         executor=InProcessExecutor(4), progress=False)
    with _Spy() as got:
        generate_dataset(df, None, tmp_path / "cb", cfg, qc_models=None, components=comp,
                         executor=ContinuousExecutor(capacity=4, backend=backend), progress=False)
    for key, img in ref.images.items():
        torch.testing.assert_close(got.images[key], img, rtol=0, atol=1e-5)
    _assert_same_records(_journal(tmp_path / "in"), _journal(tmp_path / "cb"))


@pytest.mark.skipif(native_scheduler() is None, reason="rv2._C has no scheduler")
def test_native_retry_rule_equals_python_rule():
    m = _native.native_module()
    for max_attempts in (1, 2, 4):
        for attempt in range(6):
            for ok in (False, True):
                py = next_attempt({"qc_pass": ok, "attempt": attempt}, max_attempts)
                assert m.next_attempt(ok, attempt, max_attempts) == (-1 if py is None else py)


def test_unknown_backend_and_bad_capacity_are_refused():
    with pytest.raises(ValueError, match="backend"):
        ContinuousExecutor(backend="gpu")
    with pytest.raises(ValueError, match="capacity"):
        ContinuousExecutor(capacity=0)


class _FlakyQC:
    """The stand-in QC that raises on its `fail_at`-th call (a crash mid-run)."""

    def __init__(self, fail_at):
        self.inner, self.fail_at, self.calls = mean_qc(), fail_at, 0
        self.model_id, self.model_hash, self.convention = (self.inner.model_id, self.inner.model_hash,
                                                           self.inner.convention)

    def predict(self, images):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("QC crashed")
        return self.inner.predict(images)


@pytest.mark.parametrize("speculate", [False, True], ids=["plain", "speculate"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stage_raising_leaves_a_store_that_resumes(backend, speculate, comp, tmp_path):
    df = prompts_table(6, seed=4)
    cfg = _cfg(steps=2, max_attempts=3, batch=2)
    cap = 8 if speculate else 2     # more slots than prompts: speculative attempts at once

    def ex():
        return ContinuousExecutor(capacity=cap, batch_size=2, backend=backend, speculate=speculate)

    with _PassSome():
        generate_dataset(df, None, tmp_path / "ref", cfg, qc_models=mean_qc(), components=comp,
                         executor=InProcessExecutor(2), progress=False)
        with pytest.raises(RuntimeError, match="QC crashed"):
            generate_dataset(df, None, tmp_path / "cb", cfg, qc_models=_FlakyQC(3), components=comp,
                             executor=ex(), progress=False)
        partial = _journal(tmp_path / "cb")
        assert 0 < len(partial) < len(_journal(tmp_path / "ref"))
        s = generate_dataset(df, None, tmp_path / "cb", cfg, qc_models=mean_qc(), components=comp,
                             executor=ex(), progress=False)
    _assert_same_records(_journal(tmp_path / "ref"), _journal(tmp_path / "cb"))
    assert s["this_run"]["attempts"] == len(_journal(tmp_path / "ref")) - len(partial)
    assert (s["this_run"]["scheduler"]["speculated"] > 0) == speculate
    files = {p.relative_to(tmp_path / "cb").as_posix() for p in (tmp_path / "cb" / "images").rglob("*")
             if p.is_file()}
    assert files == {r["path"] for r in _journal(tmp_path / "cb").values() if r["qc_pass"]}


def test_fused_update_path_matches_inprocess(comp, tmp_path):
    """The fused CFG + update kernel (here its CPU version) in the executor: images
    equal the in-process ones to float rounding of its linear form."""
    df = prompts_table(3, seed=6)
    cfg = _cfg(steps=4, max_attempts=1)
    with _Spy() as ref:
        generate_dataset(df, None, tmp_path / "in", cfg, qc_models=None, components=comp,
                         executor=InProcessExecutor(3), progress=False)
    with _Spy() as got:
        generate_dataset(df, None, tmp_path / "cb", cfg, qc_models=None, components=comp,
                         executor=ContinuousExecutor(capacity=2, backend="python", fused=True),
                         progress=False)
    for key, img in ref.images.items():
        torch.testing.assert_close(got.images[key], img, rtol=0, atol=1e-4)


@pytest.mark.parametrize("guidance", [3.0, 1.0], ids=["cfg", "no-cfg"])
def test_fixed_batch_step_matches_inprocess(guidance, comp, tmp_path):
    """Every slot runs every step (the free ones on zeros), as under the CUDA graph: the
    busy slots' images equal the in-process ones, retries and the partial tail included."""
    df = prompts_table(7, seed=2)
    cfg = _cfg(guidance=guidance)
    with _Spy() as ref:
        generate_dataset(df, None, tmp_path / "in", cfg, qc_models=mean_qc(), components=comp,
                         executor=InProcessExecutor(3), progress=False)
    ex = ContinuousExecutor(capacity=3, batch_size=2, backend="python", fixed_batch=True)
    calls = []
    den_cls = type(comp.unet)
    orig = den_cls.forward

    def forward(self, sample, *a, **k):
        calls.append(sample.shape[0])
        return orig(self, sample, *a, **k)

    den_cls.forward = forward
    try:
        with _Spy() as got:
            s = generate_dataset(df, None, tmp_path / "fb", cfg, qc_models=mean_qc(), components=comp,
                                 executor=ex, progress=False)
    finally:
        den_cls.forward = orig
    assert set(calls) == {6 if guidance > 1 else 3}, "every step runs the full capacity"
    assert s["this_run"]["scheduler"]["slot_occupancy"] < 1, "the test needs free slots"
    assert got.images.keys() == ref.images.keys()
    for key, img in ref.images.items():
        torch.testing.assert_close(got.images[key], img, rtol=0, atol=1e-5)
    _assert_same_records(_journal(tmp_path / "in"), _journal(tmp_path / "fb"))


def test_fixed_batch_step_with_speculation_matches_inprocess(comp, tmp_path):
    """The pairing the docs recommend (a full-capacity step, where a speculative slot
    costs nothing): slots freed by dropped attempts run on stale rows that nobody reads;
    the kept attempts' images and the journal equal the in-process run's."""
    df = prompts_table(7, seed=2)
    cfg = _cfg()
    with _PassSome(), _Spy() as ref:
        generate_dataset(df, None, tmp_path / "in", cfg, qc_models=mean_qc(), components=comp,
                         executor=InProcessExecutor(3), progress=False)
    ex = ContinuousExecutor(capacity=10, batch_size=2, backend="python", fixed_batch=True,
                            speculate=True)
    with _PassSome(), _Spy() as got:
        s = generate_dataset(df, None, tmp_path / "fb", cfg, qc_models=mean_qc(), components=comp,
                             executor=ex, progress=False)
    sch = s["this_run"]["scheduler"]
    assert sch["speculation_kept"] > 0 and sch["speculation_dropped"] > 0
    for key, img in ref.images.items():
        torch.testing.assert_close(got.images[key], img, rtol=0, atol=1e-5)
    _assert_same_records(_journal(tmp_path / "in"), _journal(tmp_path / "fb"))


class _StreamOrder:
    """StageStreams' interface, recording instead of synchronising: each stage must wait
    only on items its predecessor marked, and take the tensors it reads."""

    AFTER = {"denoise": {"encode"}, "decode": {"denoise"}, "qc": {"decode"},
             "write": {"qc", "denoise"}}   # early-stopped items skip decode and QC
    seen: list = []
    taken = 0

    def __init__(self, device, enabled):
        pass

    @contextlib.contextmanager
    def stage(self, name, waits=()):
        for it in waits:
            assert it.event in self.AFTER[name], (name, it.event)
            _StreamOrder.seen.append((name, it.prompt_id, it.attempt))
        yield

    def mark(self, name, items):
        for it in items:
            it.event = name

    def take(self, *tensors):
        _StreamOrder.taken += sum(isinstance(t, torch.Tensor) for t in tensors)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stage_streams_wait_on_each_items_previous_stage(backend, comp, tmp_path, monkeypatch):
    """The bodies' stream protocol, checked on the CPU: denoise waits on encode, decode
    on denoise, QC on decode, write on QC; every attempt reaches the write stage once."""
    from rv2.runtime import generation_bodies

    monkeypatch.setattr(generation_bodies, "StageStreams", _StreamOrder)
    _StreamOrder.seen, _StreamOrder.taken = [], 0
    s = generate_dataset(prompts_table(6, seed=3), None, tmp_path / "s", _cfg(), qc_models=mean_qc(),
                         components=comp, executor=ContinuousExecutor(capacity=2, backend=backend),
                         progress=False)
    writes = [(p, a) for st, p, a in _StreamOrder.seen if st == "write"]
    assert sorted(writes) == sorted(_journal(tmp_path / "s")) and len(writes) == s["this_run"]["attempts"]
    for stage in ("denoise", "decode", "qc"):
        assert sorted((p, a) for st, p, a in _StreamOrder.seen if st == stage) == sorted(writes), stage
    # each attempt's tensors are taken where read: latents and text embedding on joining the
    # denoiser, latents by decode, the image by QC and by write
    assert _StreamOrder.taken >= 5 * len(writes)


def test_cuda_options_name_what_they_need(comp, tmp_path):
    from rv2.errors import UserError
    from rv2.runtime.executors import make_executor

    for opts, msg in (({"cuda_streams": True}, ("cuda_streams needs the denoiser on a CUDA device; "
                                                "it is on cpu")),
                      ({"cuda_graph": True}, "cuda_graph needs the denoiser on a CUDA device.*drop it"),
                      ({"cuda_streams": True, "cuda_graph": True},
                       "cuda_streams and cuda_graph need the denoiser on a CUDA device.*drop them")):
        with pytest.raises(UserError, match=msg):
            generate_dataset(prompts_table(2), None, tmp_path / "x", _cfg(), qc_models=None,
                             components=comp, executor=ContinuousExecutor(backend="python", **opts),
                             progress=False)
    with pytest.raises(UserError, match="options of the pipeline executors"):
        make_executor("inprocess", 4, cuda_graph=True)


# ----------------------------------------------------------------- on a GPU (tools/gpu_check.sh)
# Stage streams and the denoiser's CUDA graph (rv2.runtime.cuda_overlap) give the same
# images and records as the plain pipeline.

def _cuda_cfg() -> GenerateConfig:
    cfg = GenerateConfig()
    cfg.sampler.steps, cfg.sampler.guidance, cfg.sampler.device = 4, 3.0, "cuda"
    cfg.sampler.dtype = "fp32"
    cfg.batch_size, cfg.max_attempts = 3, 3
    return cfg


@pytest.fixture()
def no_tf32(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


@pytest.mark.gpu
@pytest.mark.parametrize("backend, opts", [
    ("python", {"cuda_graph": True}),
    ("native" if native_scheduler() is not None else "python", {"cuda_streams": True, "cuda_graph": True}),
], ids=["graph", "streams+graph"])
def test_cuda_streams_and_graph_give_the_plain_pipelines_images(backend, opts, no_tf32, tmp_path):
    """Same images (fp32, no TF32; the graph runs every slot, so other batch sizes and
    kernels: 1e-4) and records, retries included; one graph capture per run."""
    from rv2.runtime import cuda_overlap

    df = prompts_table(7, seed=2)
    with _Spy() as ref:
        generate_dataset(df, None, tmp_path / "plain", _cuda_cfg(), qc_models=mean_qc(), components=tiny(0),
                         executor=ContinuousExecutor(capacity=3, batch_size=2, backend=backend),
                         progress=False)
    assert any(a > 0 for _, a in ref.images), "the test needs retries"
    captures = []
    orig = cuda_overlap.DenoiserGraph._capture

    def capture(self, *a):
        captures.append(1)
        return orig(self, *a)

    cuda_overlap.DenoiserGraph._capture = capture
    try:
        ex = ContinuousExecutor(capacity=3, batch_size=2, backend=backend, **opts)
        with _Spy() as got:
            s = generate_dataset(df, None, tmp_path / "opt", _cuda_cfg(), qc_models=mean_qc(),
                                 components=tiny(0), executor=ex, progress=False)
    finally:
        cuda_overlap.DenoiserGraph._capture = orig
    assert captures == [1] and ex.bodies.graph.graph is not None
    assert got.images.keys() == ref.images.keys()
    for key, img in ref.images.items():
        torch.testing.assert_close(got.images[key].cpu(), img.cpu(), rtol=0, atol=1e-4)
    _assert_same_records(_journal(tmp_path / "plain"), _journal(tmp_path / "opt"))
    assert s["accepted"] > 0
