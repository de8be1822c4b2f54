"""QC model wrappers, conventions, real-file loaders and the QC bundle format."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from rv2.models import qc_networks as qc
from rv2.weights import KNOWN_BY_KEY, MissingWeightsError


class Probe(nn.Module):
    """Records what the wrapper feeds the net; returns fixed outputs."""

    def __init__(self, out):
        super().__init__()
        self.out = out
        self.seen = None

    def forward(self, x):
        self.seen = x.detach().clone()
        return self.out.expand(x.shape[0], -1)


def _imgs(b=3, s=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.2 + 0.5 * torch.rand(b, 1, s, s, generator=g)


def _xrv_like(x01, size):
    """torchxrayvision's path: [0,1] -> [-1024,1024], repeat, resize, (x+1024)/2048, ImageNet."""
    x = (2 * x01 - 1) * 1024
    x = x.repeat(1, 3, 1, 1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    x = (x + 1024) / 2048
    mean = torch.tensor(qc.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(qc.IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def test_race_xrv_convention_matches_torchxrayvision_mapping():
    probe = Probe(torch.tensor([[0.0, 1.0, 2.0]]))
    m = qc.RaceModel(probe, convention="xrv", input_size=40)
    x = _imgs()
    probs = m(x)
    torch.testing.assert_close(probe.seen, _xrv_like(x, 40), atol=1e-4, rtol=1e-5)
    assert probs.shape == (3, 3)
    torch.testing.assert_close(probs.sum(1), torch.ones(3))
    assert probs.argmax(1).tolist() == [2, 2, 2]


def test_authors_convention_min_max_per_image_and_pre_resize():
    probe = Probe(torch.tensor([[0.0, 1.0]]))
    m = qc.SexModel(probe, convention="authors", input_size=32, pre_size=24)
    x = _imgs(s=48)
    x[1] = x[1] * 0.1  # a dim image: min-max must stretch it back to [0, 255]
    p = m(x)
    seen = probe.seen
    assert seen.shape == (3, 3, 32, 32)
    for i in range(3):
        # after pre-resize the min-max makes each image span [0, 255] exactly; the
        # final bilinear resize stays inside that range
        assert 0.0 <= seen[i].min() and seen[i].max() <= 255.0 + 1e-3
        assert seen[i].max() > 200
    # the same image at different brightness scales gives the same input
    torch.testing.assert_close(seen[1], m.preprocess(x[1:2] * 3.0)[0], atol=1e-3, rtol=1e-4)
    expect = torch.softmax(torch.tensor([0.0, 1.0]), 0)[1]
    torch.testing.assert_close(p, expect.expand(3))


def test_sex_xrv_convention_is_raw_255_and_constant_image_is_safe():
    probe = Probe(torch.tensor([[0.0, 0.0]]))
    m = qc.SexModel(probe, convention="xrv", input_size=16)
    x = torch.full((2, 1, 16, 16), 0.5)
    m(x)
    torch.testing.assert_close(probe.seen, torch.full((2, 3, 16, 16), 127.5))
    m.convention = "authors"
    m.pre_size = None
    out = m(x)  # constant image: no division by zero
    assert torch.isfinite(out).all() and torch.isfinite(probe.seen).all()


def test_bad_inputs_raise_clear_errors():
    m = qc.AgeModel(Probe(torch.tensor([[50.0]])), input_size=8)
    with pytest.raises(ValueError, match="B x 1 x H x W"):
        m(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="square"):
        m(torch.rand(2, 1, 8, 6))
    with pytest.raises(ValueError, match="convention"):
        qc.SexModel(nn.Identity(), convention="imagenet")
    bad = qc.RaceModel(Probe(torch.tensor([[0.0, 1.0]])), input_size=8)
    with pytest.raises(qc.QCWeightsError, match="B x 3"):
        bad(torch.rand(1, 1, 8, 8))


def _real_files(d, seed=0):
    """Write the three QC files in the formats of the published weights."""
    torch.manual_seed(seed)
    race = qc._resnet34(3, log_softmax=True).eval()
    torch.save(nn.DataParallel(race).state_dict(), d / KNOWN_BY_KEY["race"].filename)
    sex = qc._resnet34(2).eval()
    ckpt = {"epoch": 13, "global_step": 7125, "pytorch-lightning_version": "1.9.0",
            "state_dict": {f"model.{k}": v for k, v in sex.state_dict().items()},
            "hyper_parameters": {"lr": 1e-3}}
    torch.save(ckpt, d / KNOWN_BY_KEY["sex"].filename)

    class Age(nn.Module):  # same interface as the TorchScript riken model
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 1)

        def forward(self, x):
            return self.fc(x.mean(dim=(2, 3))) + 40.0

    age = Age()
    torch.jit.script(age).save(str(d / KNOWN_BY_KEY["age"].filename))
    return race, sex, age


def test_real_file_formats_load(tmp_path):
    race, sex, age = _real_files(tmp_path)
    models = qc.load_qc_models(tmp_path, batch_size=2)
    assert models.convention == "authors" and models.model_hash
    x = _imgs(b=3, s=64)
    out = models.predict(x)
    assert out["p_female"].shape == (3,) and out["race_probs"].shape == (3, 3)
    assert out["age"].shape == (3,)
    with torch.no_grad():
        pre_r = models.race.preprocess(x)
        np.testing.assert_allclose(out["race_probs"], race(pre_r).exp().numpy(), atol=1e-5)
        pre_s = models.sex.preprocess(x)
        np.testing.assert_allclose(out["p_female"], sex(pre_s).softmax(1)[:, 1].numpy(), atol=1e-5)
        np.testing.assert_allclose(out["age"], age(models.age.preprocess(x))[:, 0].numpy(), atol=1e-4)
    assert models.race.input_size == 320 and models.sex.input_size == 224
    # torchxrayvision's copy of the sex model is used when the chexploration file is absent
    (tmp_path / KNOWN_BY_KEY["sex"].filename).rename(tmp_path / KNOWN_BY_KEY["sex_xrv"].filename)
    again = qc.load_qc_models(tmp_path)
    np.testing.assert_allclose(again.predict(x)["p_female"], out["p_female"], atol=1e-6)
    assert KNOWN_BY_KEY["sex_xrv"].filename in again.model_id


def test_missing_weights_error_lists_files_and_places(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RV2_WEIGHTS_DIR", raising=False)
    d = tmp_path / "qcw"
    d.mkdir()
    with pytest.raises(MissingWeightsError) as ei:
        qc.load_qc_models(d)
    msg = str(ei.value)
    for key in ("race", "age", "sex"):
        assert KNOWN_BY_KEY[key].filename in msg
    assert str(d) in msg and ".torchxrayvision/models_data" in msg
    assert "--qc-weights-dir" in msg


def test_bundle_round_trip_and_errors(tmp_path):
    torch.manual_seed(1)
    spec = {k: {"arch": "SmallCNN", "kwargs": {"in_ch": 3, "width": 4, "n_out": qc.N_OUT[k]},
                "input_size": 24} for k in ("sex", "race", "age")}
    spec["pre_size"] = None
    nets = {k: qc.SmallCNN(3, 4, qc.N_OUT[k]).eval() for k in ("sex", "race", "age")}
    qc.save_qc_bundle(tmp_path / "b", nets["sex"], nets["race"], nets["age"], spec)
    doc = json.loads((tmp_path / "b" / qc.BUNDLE_FILE).read_text())
    assert doc["models"]["race"]["input_size"] == 24 and doc["convention"] == "authors"
    m = qc.load_qc_models(tmp_path / "b")
    x = _imgs(b=5, s=40)
    out = m.predict(x)
    with torch.no_grad():
        ref = nets["race"](m.race.preprocess(x)).softmax(1).numpy()
    np.testing.assert_allclose(out["race_probs"], ref, atol=1e-6)
    # batching does not change results
    m.batch_size = 2
    out2 = m.predict(x)
    for k in out:
        np.testing.assert_allclose(out[k], out2[k], atol=1e-5)
    assert qc.load_qc_models(tmp_path / "b", convention="xrv").convention == "xrv"
    # a corrupted bundle names the problem
    (tmp_path / "b" / "age.safetensors").unlink()
    with pytest.raises(qc.QCWeightsError, match="age.safetensors"):
        qc.load_qc_models(tmp_path / "b")
    with pytest.raises(ValueError, match="arch"):
        qc.save_qc_bundle(tmp_path / "c", nets["sex"], nets["race"], nets["age"],
                          {**spec, "race": {"arch": "vit"}})
