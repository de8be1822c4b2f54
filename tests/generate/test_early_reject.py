"""Early QC rejection (`rv2.generate.early_reject`): the stop rule, the x0 prediction,
and generation runs whose stops and accounting are checked attempt by attempt."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gen_helpers import mean_qc, prompts_table, tiny
from rv2.errors import UserError
from rv2.generate.config import EarlyRejectConfig, GenerateConfig
from rv2.generate.early_reject import (
    ATTRS,
    EarlyRejector,
    attempt_accounting,
    check_calls,
    disagreement,
    past_margin,
    predict_x0,
)
from rv2.generate.executor import InProcessExecutor
from rv2.generate.pipeline import generate_dataset
from rv2.models.sd import pndm_scheduler
from rv2.runtime.continuous_executor import ContinuousExecutor
from rv2.runtime.pipeline_scheduler import native_scheduler

STEPS = 6          # PNDM: 7 denoiser calls
BACKENDS = ["python", pytest.param("native", marks=pytest.mark.skipif(
    native_scheduler() is None, reason="rv2._C has no pipeline scheduler"))]


@pytest.fixture(scope="module")
def comp():
    return tiny(0)


def _cfg(at=(0.3, 0.6), margin=0.0, age_margin=0.0, max_attempts=3):
    cfg = GenerateConfig()
    cfg.sampler.steps, cfg.sampler.guidance, cfg.sampler.device = STEPS, 3.0, "cpu"
    cfg.batch_size, cfg.max_attempts = 4, max_attempts
    cfg.early_reject = EarlyRejectConfig(at=list(at), margin=margin, age_margin=age_margin)
    return cfg.validate()


class _Checks:
    """Collects every early check the runs make."""

    def __init__(self, monkeypatch):
        self.seen = []
        orig = EarlyRejector.check

        def check(rej, bases, ks, *args):
            out = orig(rej, bases, ks, *args)
            self.seen += [(rej.cfg, b, c) for b, c in zip(bases, out)]
            return out

        monkeypatch.setattr(EarlyRejector, "check", check)


def _journal(store):
    return {(r["prompt_id"], r["attempt"]): r for r in
            (json.loads(x) for x in (store / "journal.jsonl").read_text().splitlines())}


def test_past_margin_flags_only_scores_beyond_the_margin():
    rng = np.random.default_rng(0)
    for margin, age_margin in ((0.0, 0.0), (0.3, 5.0), (0.9, 20.0)):
        s = {"sex": rng.uniform(-1, 1, 500), "race": rng.uniform(-1, 1, 500),
             "age": rng.uniform(-30, 30, 500)}
        s["race"][::7] = np.nan                       # Hispanic: unchecked, never stops
        s["sex"][:3] = margin                         # exactly at the margin: not past it
        lim = {"sex": margin, "race": margin, "age": age_margin}
        for i, past in enumerate(past_margin(s, margin, age_margin)):
            for a in ATTRS:
                assert (a in past) == (not np.isnan(s[a][i]) and s[a][i] > lim[a])


def test_disagreement_is_the_distance_past_the_qc_boundary():
    pred = {"p_female": np.array([0.8, 0.8, 0.3]),
            "race_probs": np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]]),
            "age": np.array([50.0, 80.0, 40.0])}
    d = disagreement(pred, ["F", "M", "F"], ["White", "White", "Hispanic"], [60.0, 50.0, 40.0], 16.0)
    np.testing.assert_allclose(d["sex"], [-0.6, 0.6, 0.4])
    np.testing.assert_allclose(d["race"][:2], [-0.2, 0.5])
    assert np.isnan(d["race"][2])
    np.testing.assert_allclose(d["age"], [-6.0, 14.0, -16.0])


def test_check_calls_and_bad_settings():
    assert check_calls([0.3, 0.5], 76) == [22, 37]       # after 23 and 38 of PNDM-75's 76 calls
    assert check_calls([0.01, 0.99], 10) == [0, 8]       # at least one call, never after the last
    for bad in ({"early_reject.at": [0.0]}, {"early_reject.at": [1.2]},
                {"early_reject.at": [0.5], "early_reject.margin": 1.0},
                {"early_reject.at": [0.5], "sampler.name": "unipc"}):
        cfg = GenerateConfig.load(None, [f"{k}={json.dumps(v)}" for k, v in bad.items()])
        with pytest.raises(UserError, match="early"):
            cfg.validate()


def test_predict_x0_inverts_the_forward_noising():
    sched = pndm_scheduler()
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([901, 500, 21])
    ab = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    torch.testing.assert_close(predict_x0(sched.alphas_cumprod, xt, eps, t), x0, atol=1e-4, rtol=0)


def test_early_rejection_stops_only_past_the_margin_and_the_accounting_adds_up(comp, tmp_path,
                                                                               monkeypatch):
    df = prompts_table(8, seed=3)
    checks = _Checks(monkeypatch)
    cfg = _cfg()
    s = generate_dataset(df, None, tmp_path / "s", cfg, qc_models=mean_qc(), components=comp,
                         executor=InProcessExecutor(4), progress=False)
    assert checks.seen, "no check ran"
    for er, base, c in checks.seen:      # stopped exactly when some attribute is past its margin
        lim = {"sex": er.margin, "race": er.margin, "age": er.age_margin}
        assert c.stop == any(not np.isnan(v) and v > lim[a] for a, v in c.scores.items())
        assert c.call in {k + 1 for k in check_calls(cfg.early_reject.at, STEPS + 1)}
    stopped = [c for *_, c in checks.seen if c.stop]
    assert stopped and len(stopped) < len(checks.seen), "the test needs stops and survivors"
    j = _journal(tmp_path / "s")
    early = {k: r for k, r in j.items() if r.get("qc_early_stop_call") is not None}
    assert len(early) == len(stopped)
    for (pid, a), r in early.items():
        assert not r["qc_pass"] and r["qc_denoiser_calls"] == r["qc_early_stop_call"] < STEPS + 1
        assert r["qc_fail_reasons"] and r["path"] is None
        if a + 1 < cfg.max_attempts:
            assert (pid, a + 1) in j, "an early-stopped attempt is retried"
    acc = s["attempts"]
    assert acc["attempts"] == len(j) == s["attempts_total"]
    assert acc["attempts"] == acc["accepted"] + acc["failed"] + acc["early_stopped"]
    assert acc["early_stopped"] == len(early) and acc["accepted"] == s["accepted"]
    assert acc["failed"] == sum(1 for r in j.values()
                                if not r["qc_pass"] and r.get("qc_early_stop_call") is None)
    assert acc["denoiser_calls"] == sum(r["qc_denoiser_calls"] for r in j.values())
    full = [r for r in j.values() if r.get("qc_early_stop_call") is None]
    assert all(r["qc_denoiser_calls"] == STEPS + 1 for r in full)
    assert attempt_accounting(list(j.values())) == acc


def test_margin_nothing_exceeds_gives_the_run_without_early_rejection(comp, tmp_path, monkeypatch):
    df = prompts_table(6, seed=4)
    off = _cfg(at=())
    generate_dataset(df, None, tmp_path / "off", off, qc_models=mean_qc(), components=comp,
                     executor=InProcessExecutor(4), progress=False)
    checks = _Checks(monkeypatch)
    wide = _cfg(margin=0.999, age_margin=1e6)
    s = generate_dataset(df, None, tmp_path / "wide", wide, qc_models=mean_qc(), components=comp,
                         executor=InProcessExecutor(4), progress=False)
    assert checks.seen and not any(c.stop for *_, c in checks.seen)
    assert s["attempts"]["early_stopped"] == 0
    a, b = _journal(tmp_path / "off"), _journal(tmp_path / "wide")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k]["qc_pass"] == b[k]["qc_pass"]
        assert a[k]["qc_p_female"] == pytest.approx(b[k]["qc_p_female"], abs=1e-4)
        assert a[k]["qc_age_pred"] == pytest.approx(b[k]["qc_age_pred"], abs=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_continuous_executor_stops_the_same_attempts(backend, comp, tmp_path):
    df = prompts_table(7, seed=3)
    cfg = _cfg()
    generate_dataset(df, None, tmp_path / "in", cfg, qc_models=mean_qc(), components=comp,
                     executor=InProcessExecutor(4), progress=False)
    s = generate_dataset(df, None, tmp_path / "cb", cfg, qc_models=mean_qc(), components=comp,
                         executor=ContinuousExecutor(capacity=3, batch_size=2, backend=backend),
                         progress=False)
    a, b = _journal(tmp_path / "in"), _journal(tmp_path / "cb")
    assert a.keys() == b.keys()
    assert any(r.get("qc_early_stop_call") for r in a.values())
    for k in a:
        for f in ("qc_pass", "qc_early_stop_call", "qc_denoiser_calls", "qc_fail_reasons"):
            assert a[k].get(f) == b[k].get(f), (k, f)
    acc = s["attempts"]
    assert acc["attempts"] == acc["accepted"] + acc["failed"] + acc["early_stopped"] == len(b)


def test_early_rejection_needs_qc(comp, tmp_path):
    cfg = _cfg()
    cfg.qc.enabled = False
    with pytest.raises(UserError, match="QC"):
        generate_dataset(prompts_table(2), None, tmp_path / "s", cfg, qc_models=None,
                         components=comp, executor=InProcessExecutor(2), progress=False)
