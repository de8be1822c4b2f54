"""The generation seams: stage ports, the one retry rule, executors as arguments."""
from __future__ import annotations

import pandas as pd
import pytest
import torch
from gen_helpers import STEPS, prompts_table, tiny
from rv2.generate.config import GenerateConfig
from rv2.generate.eager import eager_stages
from rv2.generate.executor import InProcessExecutor, next_attempt
from rv2.generate.pipeline import generate_dataset
from rv2.generate.stages import STAGE_NAMES, Decoder, Denoiser, QCPredictor, TextEncoder
from rv2.testing.qc import mean_qc


def _cfg(**kw):
    cfg = GenerateConfig(batch_size=kw.pop("batch_size", 3), max_attempts=kw.pop("max_attempts", 3))
    cfg.sampler.steps, cfg.sampler.guidance, cfg.sampler.device = STEPS, 3.0, "cpu"
    cfg.store.manifest_every = 1000
    return cfg


@pytest.mark.parametrize("rec,expected", [
    ({"qc_pass": True, "attempt": 0}, None),
    ({"qc_pass": False, "attempt": 0}, 1),
    ({"qc_pass": False, "attempt": 2}, 3),
    ({"qc_pass": False, "attempt": 3}, None),   # the 4th attempt was the last
    ({"qc_pass": True, "attempt": 3}, None),
])
def test_one_retry_rule(rec, expected):
    assert next_attempt(rec, 4) == expected
    assert next_attempt(dict(rec), 4) == expected    # pure: same input, same answer


def test_eager_stages_fill_the_ports():
    st = eager_stages(tiny(0), qc=mean_qc())
    assert isinstance(st.text_encoder, TextEncoder) and isinstance(st.denoiser, Denoiser)
    assert isinstance(st.decoder, Decoder) and isinstance(st.qc, QCPredictor)
    ctx = st.text_encoder.encode(["50 year old WHITE male. Normal .", ""])
    assert ctx.shape[:2] == (2, 77)
    lat = torch.zeros(2, st.denoiser.in_channels, st.denoiser.sample_size, st.denoiser.sample_size)
    eps_scalar = st.denoiser.predict_noise(lat, torch.tensor(500), ctx)
    eps_rows = st.denoiser.predict_noise(lat, torch.tensor([500, 500]), ctx)
    assert eps_scalar.shape == lat.shape and torch.equal(eps_scalar, eps_rows)  # one timestep per row
    img = st.decoder.decode(lat)
    assert img.shape == (2, 3, lat.shape[2] * st.decoder.scale_factor, lat.shape[3] * st.decoder.scale_factor)
    assert img.dtype == torch.float32 and img.min() >= 0 and img.max() <= 1


class RecordingExecutor(InProcessExecutor):
    """An executor given by the caller: batches of one, in reverse order of the work."""

    name = "recording"

    def __init__(self):
        super().__init__(batch_size=1)
        self.batches = []

    def run(self, runner, work, max_attempts, on_result=None):
        pending = list(reversed(work))
        while pending:
            item = pending.pop(0)
            self.batches.append(item)
            for rec in runner.process([item]):
                nxt = next_attempt(rec, max_attempts)
                if nxt is not None:
                    pending.insert(0, (rec["prompt_id"], nxt))
                if on_result:
                    on_result(rec, nxt is None)


def test_executor_is_an_argument_and_grouping_does_not_change_images(tmp_path):
    df = prompts_table(5)
    ref = generate_dataset(df, None, tmp_path / "a", _cfg(), qc_models=mean_qc(), components=tiny(0),
                           progress=False)
    ex = RecordingExecutor()
    other = generate_dataset(df, None, tmp_path / "b", _cfg(), qc_models=mean_qc(),
                             components=tiny(0), executor=ex, progress=False)
    assert other["executor"] == "recording" and ref["executor"] == "inprocess"
    assert ex.batches[0] == (df.prompt_id.iloc[-1], 0)
    la = pd.read_parquet(tmp_path / "a" / "qc_log.parquet").sort_values(["prompt_id", "attempt"])
    lb = pd.read_parquet(tmp_path / "b" / "qc_log.parquet").sort_values(["prompt_id", "attempt"])
    assert la[["prompt_id", "attempt", "seed", "qc_pass"]].values.tolist() == \
        lb[["prompt_id", "attempt", "seed", "qc_pass"]].values.tolist()
    # images: with QC off every first attempt is accepted; batch of 3 vs batch of 1
    cfg = _cfg()
    cfg.qc.enabled = False
    generate_dataset(df, None, tmp_path / "c", cfg, qc_models=None, components=tiny(0), progress=False)
    generate_dataset(df, None, tmp_path / "d", cfg, qc_models=None, components=tiny(0),
                     executor=RecordingExecutor(), progress=False)
    mc = pd.read_parquet(tmp_path / "c" / "manifest.parquet").set_index("prompt_id")
    md = pd.read_parquet(tmp_path / "d" / "manifest.parquet").set_index("prompt_id")
    assert sorted(mc.index) == sorted(md.index) == sorted(df.prompt_id)
    from rv2.data.imageio import load_image

    for pid in mc.index:   # the same pixels, to one grey level (batched matmuls may round apart)
        a, b = load_image(tmp_path / "c" / mc.path[pid]), load_image(tmp_path / "d" / md.path[pid])
        assert abs(a - b).max() <= 1 / 255 + 1e-6
    assert set(ref["this_run"]["stage_seconds"]) == set(STAGE_NAMES)


def test_a_ready_stage_set_runs_without_a_model_folder(tmp_path):
    st = eager_stages(tiny(0), qc=mean_qc())
    s = generate_dataset(prompts_table(2), None, tmp_path / "o", _cfg(), stages=st, progress=False)
    assert s["prompts_seen"] == 2 and s["qc_model"] == "mean-net@meannet"
