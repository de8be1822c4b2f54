"""The Predictor: one preprocessing for every caller, real file formats, a pluggable
backend, thresholds applied by the saved rule."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rv2.classify.predictor import Predictor, Preprocessing
from rv2.data.imageio import ImageReadError, load_image
from rv2.data.schema import CHEXPERT_LABELS
from rv2.data.torch_dataset import preprocess

from .conftest import make_manifest

REAL_CXR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real-cxr"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A classifier folder trained for one epoch on the tiny visible-label set."""
    from rv2.classify import ClassifierConfig, train_classifier

    base = tmp_path_factory.mktemp("pred")
    real = make_manifest(base / "real", 24, seed=1, prefix="real")
    val = make_manifest(base / "val", 16, seed=3, prefix="val", split="val")
    cfg = ClassifierConfig(strategy="real", real=str(real), val=str(val), out=str(base / "m"),
                           epochs=1, batch_size=8, image_size=32, device="cpu", init="scratch",
                           num_workers=0, progress=False)
    return train_classifier(cfg), val


def test_preprocessing_matches_the_training_dataset(model_dir):
    from rv2.data.torch_dataset import ManifestDataset

    out, val = model_dir
    p = Predictor.load(out, "cpu")
    df = pd.read_parquet(val)
    ds = ManifestDataset(df, val.parent, image_size=p.preprocessing.image_size, labels=p.labels,
                         mean=p.preprocessing.mean, std=p.preprocessing.std, require_labels=False)
    img = load_image(val.parent / df.path[0])
    ours = p.prepare([img])
    theirs = ds[0]["image"].numpy()[None]
    assert ours.shape == theirs.shape == (1, 3, 32, 32)
    assert np.array_equal(ours, theirs)


def test_bytes_tensor_and_rv2_predict_agree(model_dir):
    from rv2.classify.inference import predict

    out, val = model_dir
    p = Predictor.load(out, "cpu")
    df = pd.read_parquet(val).head(6)
    blobs = [(val.parent / rel).read_bytes() for rel in df.path]
    by_bytes = p.predict_bytes(blobs)
    by_tensor = p.predict_tensor(p.prepare([load_image(val.parent / rel) for rel in df.path]))
    ref = predict(out, df, val.parent, device="cpu", progress=False, batch_size=4)
    assert by_bytes.shape == (6, len(CHEXPERT_LABELS)) and by_bytes.dtype == np.float32
    assert np.array_equal(by_bytes, by_tensor)
    # rv2 predict batches by 4: batched convolutions may round apart in the last bits
    assert np.allclose(by_bytes, ref[list(CHEXPERT_LABELS)].to_numpy(), rtol=0, atol=1e-6)
    # a 1-channel tensor is replicated to the model's 3 channels
    one = p.prepare([load_image(val.parent / df.path[0])])[:, :1]
    assert np.array_equal(p.predict_tensor(one), p.predict_tensor(p.prepare([load_image(val.parent / df.path[0])])))


@pytest.mark.skipif(not REAL_CXR.is_dir(), reason="../shared/data/real-cxr is absent")
@pytest.mark.parametrize("name", ["00000001_000.png", "16747_3_1.jpg", "siim_sample.dcm"])
def test_real_png_jpeg_dicom(model_dir, name):
    out, _ = model_dir
    p = Predictor.load(out, "cpu")
    data = (REAL_CXR / name).read_bytes()
    probs = p.predict_bytes([data], [name])
    expected = p.predict_tensor(p.preprocessing.batch([preprocess(load_image(REAL_CXR / name), 32)]))
    assert np.array_equal(probs, expected)
    assert np.isfinite(probs).all() and ((probs >= 0) & (probs <= 1)).all()


def test_bad_inputs_are_user_errors(model_dir):
    from rv2.errors import UserError

    out, _ = model_dir
    p = Predictor.load(out, "cpu")
    with pytest.raises(ImageReadError):
        p.predict_bytes([b"\x89PNG\r\n\x1a\ntruncated"], ["x.png"])
    with pytest.raises(UserError, match=r"N x 3 x 32 x 32"):
        p.predict_tensor(np.zeros((2, 3, 16, 16), np.float32))
    with pytest.raises(UserError, match="model folder not found"):
        Predictor.load(out.parent / "nope")


def test_thresholds_by_the_saved_rule_and_a_custom_backend(model_dir):
    import json

    out, _ = model_dir
    thr = json.loads((out / "thresholds.json").read_text())["thresholds"]

    class Fixed:  # any object with the Backend shape plugs in
        name, max_batch_size = "fixed", 2

        def __init__(self):
            self.calls = []

        def logits(self, x):
            self.calls.append(len(x))
            t = np.array([thr[c] for c in CHEXPERT_LABELS], np.float64)
            return np.log(t / (1 - t))[None].repeat(len(x), 0).astype(np.float32)

    be = Fixed()
    p = Predictor.load(out, backend=be)
    probs = p.predict_tensor(np.zeros((5, 3, 32, 32), np.float32))
    assert be.calls == [2, 2, 1]                           # split by max_batch_size
    expect = np.asarray(probs, np.float64) >= np.array([thr[c] for c in CHEXPERT_LABELS])[None]
    assert np.array_equal(p.positive(probs), expect)
    assert p.positive_labels(probs)[0] == [c for c, on in zip(CHEXPERT_LABELS, expect[0]) if on]


def test_preprocessing_from_model_config():
    pre = Preprocessing.from_model_config({"image_size": 8, "normalization": {"mean": 0.5, "std": 0.25}})
    x = pre.batch([np.full((8, 8), 0.75, np.float32)])
    assert x.shape == (1, 3, 8, 8) and np.allclose(x, 1.0)


def test_loader_workers_rule():
    """auto (None): up to 8 workers on CUDA with Pillow, leaving the main process a core;
    0 on the CPU and for DALI on CUDA; a given number is kept; a negative one is refused."""
    import torch
    from rv2.data.dali import loader_workers
    from rv2.errors import UserError

    cuda = torch.device("cuda", 0)
    assert loader_workers(None, cuda, "pil", cpus=16) == 8
    assert loader_workers(None, cuda, "pil", cpus=4) == 3
    assert loader_workers(None, "cuda:1", "pil", cpus=1) == 1
    assert loader_workers(None, cuda, "dali", cpus=16) == 0
    assert loader_workers(None, torch.device("cpu"), "pil", cpus=16) == 0
    assert loader_workers(3, torch.device("cpu")) == 3 and loader_workers(0, cuda) == 0
    with pytest.raises(UserError, match="--num-workers"):
        loader_workers(-1, cuda)
