"""The sampler and generate_dataset on CUDA: fp16 and bf16 against fp32, CUDA against CPU,
and fp16 overflow caught (run on a GPU by tools/gpu_check.sh)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from gen_helpers import prompts_table, tiny
from PIL import Image
from rv2.generate.config import GenerateConfig
from rv2.generate.eager import eager_stages
from rv2.generate.pipeline import generate_dataset
from rv2.generate.sampler import denoise, latent_shape, latents_for

pytestmark = pytest.mark.gpu

DEVICE = "cuda"
STEPS = 10
PROMPTS = ["60 year old WHITE female. Small left effusion .", "30 year old ASIAN male. Normal .",
           "45 year old BLACK female. Cardiomegaly .", "80 year old HISPANIC male. Edema ."]
# Measured on the CPU with these components (image max |diff|, latent relative error):
# fp16 0.0015 / 0.0015, bf16 0.012 / 0.0096. Bounds leave about 5x for other kernels.
TOLERANCE = {torch.float16: (0.01, 0.008), torch.bfloat16: (0.06, 0.05)}


def _sample(dtype: torch.dtype, device: str):
    st = eager_stages(tiny(0), device, dtype)
    lat, _ = latents_for([f"p{i}" for i in range(len(PROMPTS))], [0] * len(PROMPTS),
                         latent_shape(st.denoiser, st.decoder), device=device, dtype=dtype)
    cond = st.text_encoder.encode(PROMPTS)
    uncond = st.text_encoder.encode([""])
    x = denoise(st.denoiser, st.scheduler, cond, uncond, lat, STEPS, 4.0)
    return x.float().cpu(), st.decoder.decode(x).cpu()


@pytest.fixture(scope="module")
def fp32_on_device():
    return _sample(torch.float32, DEVICE)


def _no_tf32(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_sampler_matches_fp32(dtype, fp32_on_device):
    ref_lat, ref_img = fp32_on_device
    lat, img = _sample(dtype, DEVICE)
    assert torch.isfinite(lat).all() and torch.isfinite(img).all(), f"{dtype}: NaN/inf"
    img_tol, lat_tol = TOLERANCE[dtype]
    rel = ((lat - ref_lat).norm() / ref_lat.norm()).item()
    worst = (img - ref_img).abs().max().item()
    assert rel <= lat_tol, f"{dtype}: latent relative error {rel:.4g} > {lat_tol}"
    assert worst <= img_tol, f"{dtype}: image max |diff| {worst:.4g} > {img_tol}"
    grey = ((img * 255).round() - (ref_img * 255).round()).abs()
    assert (grey <= 2).float().mean().item() >= 0.99


def test_cuda_fp32_matches_cpu_fp32(monkeypatch):
    _no_tf32(monkeypatch)
    torch.set_num_threads(2)
    cpu_lat, cpu_img = _sample(torch.float32, "cpu")
    lat, img = _sample(torch.float32, DEVICE)
    assert ((lat - cpu_lat).norm() / cpu_lat.norm()).item() <= 1e-4
    assert (img - cpu_img).abs().max().item() <= 1e-3


def _cfg(device: str, dtype: str) -> GenerateConfig:
    cfg = GenerateConfig()
    cfg.sampler.steps, cfg.sampler.device, cfg.sampler.dtype = STEPS, device, dtype
    cfg.batch_size, cfg.max_attempts = 3, 1
    cfg.qc.enabled = False  # every finite image is kept: the comparison needs no QC model
    return cfg


def _pixels(out) -> dict[str, np.ndarray]:
    man = pd.read_parquet(out / "manifest.parquet")
    return {p: np.asarray(Image.open(out / path), dtype=np.int16)
            for p, path in zip(man["prompt_id"], man["path"])}


def test_generate_dataset_fp16_on_cuda_matches_fp32_on_cpu(tmp_path):
    df = prompts_table(6)
    cpu = generate_dataset(df, None, tmp_path / "cpu", _cfg("cpu", "fp32"), qc_models=None,
                           components=tiny(0), progress=False)
    gpu = generate_dataset(df, None, tmp_path / "gpu", _cfg(DEVICE, "fp16"), qc_models=None,
                           components=tiny(0), progress=False)
    assert cpu["accepted"] == gpu["accepted"] == 6
    a, b = _pixels(tmp_path / "cpu"), _pixels(tmp_path / "gpu")
    assert a.keys() == b.keys()
    close = np.mean([(np.abs(a[k] - b[k]) <= 2).mean() for k in a])
    assert close >= 0.99, f"only {close:.3%} of pixels within 2 grey levels"


def test_fp16_overflow_never_passes(tmp_path):
    """SD 2.x can overflow in fp16: here a UNet whose output exceeds fp16's range (65504)
    gives non-finite latents; such images are rejected, never written."""
    def overflowing():
        comp = tiny(0)
        with torch.no_grad():
            comp.unet.conv_out.weight.fill_(1000.0)  # about 1e5 at the output: finite in fp32
        return comp

    s16 = generate_dataset(prompts_table(2), None, tmp_path / "fp16", _cfg(DEVICE, "fp16"),
                           qc_models=None, components=overflowing(), progress=False)
    assert s16["accepted"] == 0 and s16["failed_by_attribute"] == {"nonfinite": 2}
    assert not list((tmp_path / "fp16" / "images").rglob("*.png"))
    s32 = generate_dataset(prompts_table(2), None, tmp_path / "fp32", _cfg(DEVICE, "fp32"),
                           qc_models=None, components=overflowing(), progress=False)
    assert s32["accepted"] == 2
