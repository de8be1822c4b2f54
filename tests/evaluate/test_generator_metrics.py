"""Generator metrics against their peers: torch-fidelity and clean-fid (Fréchet
distance), pytorch-msssim (MS-SSIM); and the definitions' edge cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from rv2.evaluate import generator_metrics as gm
from rv2.evaluate.generator_metrics import (
    bootstrap_mean_ci,
    cosine_rows,
    fid_from_features,
    frechet_distance,
    mean_pairwise_cosine,
    ms_ssim,
)


def _feature_sets(seed=0, n_a=300, n_b=260, d=32):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n_a, d)) @ rng.normal(size=(d, d)) * 0.4
    b = rng.normal(0.3, 1.1, size=(n_b, d)) @ rng.normal(size=(d, d)) * 0.3 + 0.5
    return a.astype(np.float32), b.astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_distance_equals_torch_fidelity_and_clean_fid(seed):
    tf_fid = pytest.importorskip("torch_fidelity.metric_fid")
    cf = pytest.importorskip("cleanfid.fid")
    a, b = _feature_sets(seed)
    ours = fid_from_features(a, b)
    sa = tf_fid.fid_features_to_statistics(torch.from_numpy(a).double())
    sb = tf_fid.fid_features_to_statistics(torch.from_numpy(b).double())
    theirs_tf = tf_fid.fid_statistics_to_metric(sa, sb, False)["frechet_inception_distance"]
    theirs_cf = cf.frechet_distance(sa["mu"], sa["sigma"], sb["mu"], sb["sigma"])
    assert ours > 1.0
    assert ours == pytest.approx(theirs_tf, abs=1e-6)
    assert ours == pytest.approx(theirs_cf, abs=1e-6)
    # the same from statistics, and symmetric
    mu_a, s_a = gm.feature_stats(a)
    assert np.allclose(s_a, sa["sigma"], atol=1e-12) and np.allclose(mu_a, sa["mu"])
    assert fid_from_features(b, a) == pytest.approx(ours, abs=1e-8)


def test_fid_is_zero_for_identical_sets_and_positive_otherwise():
    a, b = _feature_sets(3)
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-6)
    assert fid_from_features(a, a.copy()[::-1]) == pytest.approx(0.0, abs=1e-6)  # order-free
    assert fid_from_features(a, a + 1.0) == pytest.approx(a.shape[1], rel=1e-9)  # mean shift only
    assert fid_from_features(a, b) > 0


def test_fid_of_rank_deficient_covariances_stays_real():
    # fewer images than feature dimensions (a small validation set on 2048-d features)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20, 64)), rng.normal(size=(20, 64))
    v = fid_from_features(a, b)
    assert np.isfinite(v) and v > 0
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    s1, s2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    # sum (sqrt(a) - sqrt(b))^2 for commuting covariances
    assert frechet_distance([0, 0], s1, [1, 2], s2) == pytest.approx(5 + (1 - 3) ** 2 + (2 - 1) ** 2)


def test_bad_feature_inputs_are_rejected():
    with pytest.raises(ValueError, match="at least 2"):
        gm.feature_stats(np.ones((1, 4)))
    with pytest.raises(ValueError, match="NaN"):
        gm.feature_stats(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="shapes differ"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def _pairs(seed, shape, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=dtype)
    y = (0.6 * x + 0.4 * torch.rand(shape, generator=g, dtype=dtype)).clamp(0, 1)
    return x, y


@pytest.mark.parametrize("shape", [(3, 1, 181, 163), (2, 3, 170, 170)])
def test_ms_ssim_equals_pytorch_msssim(shape):
    pm = pytest.importorskip("pytorch_msssim")
    x, y = _pairs(0, shape)
    ours = ms_ssim(x, y)
    theirs = pm.ms_ssim(x, y, data_range=1.0, size_average=False)
    # pytorch-msssim builds its Gaussian window in float32; ours is float64
    assert torch.allclose(ours, theirs.double(), atol=2e-6, rtol=0)
    assert ((ours > 0.2) & (ours < 1)).all()


def test_ms_ssim_with_custom_scales_and_window_equals_pytorch_msssim():
    pm = pytest.importorskip("pytorch_msssim")
    x, y = _pairs(1, (3, 3, 101, 111))
    w = [0.2, 0.3, 0.5]
    ours = ms_ssim(x, y, weights=w, win_size=7)
    theirs = pm.ms_ssim(x, y, data_range=1.0, size_average=False, weights=w, win_size=7)
    assert torch.allclose(ours, theirs.double(), atol=2e-6, rtol=0)


def test_ms_ssim_is_the_same_formula_as_pytorch_msssim_to_rounding(monkeypatch):
    """With pytorch-msssim's float32-rounded window, the two agree to float64 rounding."""
    pm = pytest.importorskip("pytorch_msssim")

    def window32(size, sigma, device=None, dtype=None):
        c = torch.arange(size, dtype=torch.float32) - size // 2
        g = torch.exp(-(c ** 2) / (2 * sigma ** 2))
        return (g / g.sum()).to(device=device, dtype=dtype)

    monkeypatch.setattr(gm, "_gauss_1d", window32)
    x, y = _pairs(2, (2, 1, 175, 190))
    ours = ms_ssim(x, y)
    theirs = pm.ms_ssim(x, y, data_range=1.0, size_average=False)
    assert torch.allclose(ours, theirs, atol=1e-12, rtol=0)


def test_ms_ssim_edge_cases():
    x, y = _pairs(3, (2, 1, 64, 64))
    same = ms_ssim(x, x, weights=[0.5, 0.5], win_size=7)
    assert torch.allclose(same, torch.ones(2, dtype=torch.float64), atol=1e-12)
    assert (ms_ssim(x, y, weights=[0.5, 0.5], win_size=7) < 1).all()
    with pytest.raises(ValueError, match="too small"):
        ms_ssim(x, y)  # 64 px cannot take 5 scales of an 11-pixel window
    with pytest.raises(ValueError, match="one shape"):
        ms_ssim(x, y[:, :, :32])
    # uint8-range data with data_range 255 equals the [0, 1] result
    a = ms_ssim(x * 255, y * 255, data_range=255.0, weights=[0.5, 0.5], win_size=7)
    b = ms_ssim(x, y, weights=[0.5, 0.5], win_size=7)
    assert torch.allclose(a, b, atol=1e-10)


def test_cosine_and_pairwise_diversity():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    b = np.array([[2.0, 0.0], [-1.0, -1.0], [1.0, 0.0]])
    assert np.allclose(cosine_rows(a, b), [1.0, -1.0, 0.0])
    emb = np.array([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]],    # collapse: identical images
                    [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])  # pairs: 0, -1, 0
    assert np.allclose(mean_pairwise_cosine(emb), [1.0, -1.0 / 3.0])
    with pytest.raises(ValueError, match="images >= 2"):
        mean_pairwise_cosine(emb[:, :1])


def test_bootstrap_mean_ci():
    rng = np.random.default_rng(0)
    v = rng.normal(0.5, 0.1, size=200)
    ci = bootstrap_mean_ci(np.append(v, np.nan), n_boot=500, seed=1)
    assert ci.n == 200 and ci.mean == pytest.approx(v.mean())
    assert ci.low < ci.mean < ci.high
    # the percentile interval is about +-1.96 standard errors
    se = v.std(ddof=1) / np.sqrt(v.size)
    assert (ci.high - ci.low) == pytest.approx(2 * 1.96 * se, rel=0.25)
    assert bootstrap_mean_ci(v, 500, 1) == bootstrap_mean_ci(v, 500, 1)  # seeded
    one = bootstrap_mean_ci([0.3], 100)
    assert one.mean == 0.3 and np.isnan(one.low)
    assert bootstrap_mean_ci([np.nan], 100).n == 0
