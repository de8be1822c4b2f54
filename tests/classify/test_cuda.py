"""Classifier training and `predict` on CUDA (bf16 autocast, channels-last) against the
CPU in fp32 (run on a GPU by tools/gpu_check.sh)."""
import numpy as np
import pandas as pd
import pytest
from rv2.classify import ClassifierConfig, predict, train_classifier

pytestmark = pytest.mark.gpu


def _config(tiny_data, out, device: str) -> ClassifierConfig:
    return ClassifierConfig(strategy="real", real=str(tiny_data["real"]), val=str(tiny_data["val"]),
                            out=str(out), image_size=32, init="scratch", epochs=2, batch_size=16,
                            lr=1e-3, num_workers=0, progress=False, device=device)


def test_predict_on_cuda_matches_cpu(tiny_data, tmp_path):
    model = train_classifier(_config(tiny_data, tmp_path / "m", "cpu"))
    cpu = predict(model, tiny_data["val"], device="cpu", progress=False)
    gpu = predict(model, tiny_data["val"], device="cuda", progress=False)  # bf16 autocast
    assert list(gpu["image_id"]) == list(cpu["image_id"])
    p, q = cpu.drop(columns="image_id").to_numpy(), gpu.drop(columns="image_id").to_numpy()
    assert np.isfinite(q).all()
    # bf16 keeps 8 bits of mantissa: probabilities agree to a few hundredths
    assert np.abs(p - q).max() <= 0.03, np.abs(p - q).max()
    fp32 = predict(model, tiny_data["val"], device="cuda", amp=False, progress=False)
    assert np.abs(p - fp32.drop(columns="image_id").to_numpy()).max() <= 2e-3


def test_training_on_cuda_learns_and_is_finite(tiny_data, tmp_path):
    out = train_classifier(_config(tiny_data, tmp_path / "g", "cuda"))
    hist = pd.read_csv(out / "history.csv")
    assert np.isfinite(hist["train_loss"]).all() and np.isfinite(hist["val_loss"]).all()
    assert hist["train_loss"].iloc[-1] < hist["train_loss"].iloc[0]
