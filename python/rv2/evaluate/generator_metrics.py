"""Generator quality metrics on arrays: Fréchet distance, MS-SSIM, cosine
similarity, intra-prompt diversity and bootstrap CIs of per-prompt means.

Definitions (tested against torch-fidelity, clean-fid and pytorch-msssim):

* Fréchet distance of two feature sets (Heusel et al. 2017):
  ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), covariances with
  ddof = 1, all in float64. Tr((S_a S_b)^(1/2)) is the sum of the square roots
  of the eigenvalues of S_a^(1/2) S_b S_a^(1/2) (a symmetric PSD matrix, so
  eigh applies; rank-deficient covariances, fewer images than feature
  dimensions, stay real where scipy's sqrtm turns complex).
* MS-SSIM (Wang et al. 2003): Gaussian window (size 11, sigma 1.5) applied
  as a valid (unpadded) separable convolution, K1 = 0.01, K2 = 0.03; at each of
  the M scales the contrast-structure term cs is averaged over the image, the
  luminance-contrast-structure term ssim only at the coarsest; negative values
  are clipped to 0; between scales a 2x2 average pool (odd sizes padded);
  MS-SSIM = prod_{j<M} cs_j^w_j * ssim_M^w_M, averaged over channels.
  Weights default to Wang's five (0.0448, 0.2856, 0.3001, 0.2363, 0.1333);
  fewer scales (small images) take a shorter weight list.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from rv2.errors import UserError
from rv2.evaluate.bootstrap import CI, bootstrap_weights, percentile_ci

MSSSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


# ------------------------------------------------------------------ Fréchet distance

def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (ddof 1) of an (n, d) feature array, float64."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2:
        raise UserError(f"features must be (n, d); got shape {f.shape}")
    if f.shape[0] < 2:
        raise UserError(f"a covariance needs at least 2 feature rows; got {f.shape[0]}")
    if not np.isfinite(f).all():
        raise UserError("features contain NaN or infinity")
    return f.mean(axis=0), np.cov(f, rowvar=False, ddof=1).reshape(f.shape[1], f.shape[1])


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu_a, sigma_a, mu_b, sigma_b) -> float:
    """Fréchet distance between Gaussians N(mu_a, sigma_a) and N(mu_b, sigma_b)."""
    mu_a, mu_b = np.asarray(mu_a, np.float64).ravel(), np.asarray(mu_b, np.float64).ravel()
    sa, sb = np.atleast_2d(np.asarray(sigma_a, np.float64)), np.atleast_2d(np.asarray(sigma_b, np.float64))
    d = mu_a.size
    if mu_b.size != d or sa.shape != (d, d) or sb.shape != (d, d):
        raise UserError(f"shapes differ: mu {mu_a.shape} / {mu_b.shape}, sigma {sa.shape} / {sb.shape}")
    root_a = _sqrt_psd(sa)
    m = root_a @ sb @ root_a
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    tr_cross = float(np.sqrt(np.clip(ev, 0.0, None)).sum())
    diff = mu_a - mu_b
    # the distance is >= 0; identical sets leave only rounding noise of either sign
    return max(0.0, float(diff @ diff + np.trace(sa) + np.trace(sb) - 2.0 * tr_cross))


def fid_from_features(features_a, features_b) -> float:
    """Fréchet distance between two (n, d) feature sets."""
    return frechet_distance(*feature_stats(features_a), *feature_stats(features_b))


# ------------------------------------------------------------------ MS-SSIM

def _gauss_1d(size: int, sigma: float, device=None, dtype=None):
    import torch

    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return (g / g.sum()).to(device=device, dtype=dtype)


def _blur(x, g):
    """Valid separable convolution of B x C x H x W with the 1-D window g."""
    import torch.nn.functional as F

    c = x.shape[1]
    k = g.numel()
    x = F.conv2d(x, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(x, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def _ssim_cs(x, y, g, data_range: float, k1: float, k2: float):
    """Per-image, per-channel mean SSIM and mean contrast-structure, B x C each."""
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mx, my = _blur(x, g), _blur(y, g)
    vx = _blur(x * x, g) - mx * mx
    vy = _blur(y * y, g) - my * my
    cxy = _blur(x * y, g) - mx * my
    cs = (2 * cxy + c2) / (vx + vy + c2)
    lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    return (lum * cs).flatten(2).mean(-1), cs.flatten(2).mean(-1)


def ms_ssim(x, y, *, data_range: float = 1.0, win_size: int = 11, sigma: float = 1.5,
            weights: Sequence[float] = MSSSIM_WEIGHTS, k: tuple[float, float] = (0.01, 0.03)):
    """MS-SSIM of image pairs: x, y B x C x H x W tensors (or arrays) -> B values (torch, float64).

    The smaller image side must exceed (win_size - 1) * 2^(scales - 1)."""
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(torch.float64)
    y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).to(torch.float64)
    if x.shape != y.shape or x.ndim != 4:
        raise UserError(f"MS-SSIM takes two B x C x H x W batches of one shape; got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    if win_size % 2 != 1:
        raise UserError(f"win_size must be odd; got {win_size}")
    w = torch.tensor(list(weights), dtype=torch.float64, device=x.device)
    levels = w.numel()
    need = (win_size - 1) * 2 ** (levels - 1)
    if min(x.shape[-2:]) <= need:
        raise UserError(f"images of {x.shape[-2]}x{x.shape[-1]} are too small for MS-SSIM with "
                         f"{levels} scales and window {win_size} (the smaller side must exceed "
                         f"{need}); resize them up (msssim_size), or use fewer scales / a smaller "
                         "window (msssim_weights, msssim_win)")
    g = _gauss_1d(win_size, sigma, x.device, torch.float64)
    terms = []
    for j in range(levels):
        ssim, cs = _ssim_cs(x, y, g, data_range, *k)
        if j < levels - 1:
            terms.append(torch.relu(cs))
            pad = [s % 2 for s in x.shape[-2:]]  # an odd side gets a zero row/column each end
            x = F.avg_pool2d(x, 2, padding=pad)
            y = F.avg_pool2d(y, 2, padding=pad)
    terms.append(torch.relu(ssim))
    stack = torch.stack(terms, dim=0)                      # M x B x C
    val = torch.prod(stack ** w.view(-1, 1, 1), dim=0)     # B x C
    return val.mean(dim=1)


# ------------------------------------------------------------------ embeddings

def cosine_rows(a, b) -> np.ndarray:
    """Cosine similarity of matching rows of two (n, d) arrays."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise UserError(f"cosine_rows takes two (n, d) arrays of one shape; got {a.shape}, {b.shape}")
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(axis=1) / (na * nb)


def pairs(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs i < j of k items."""
    i, j = np.triu_indices(k, 1)
    return i, j


def mean_pairwise_cosine(emb) -> np.ndarray:
    """(P, K, d) embeddings of K images per prompt -> (P,) mean cosine over the K(K-1)/2 pairs."""
    e = np.asarray(emb, np.float64)
    if e.ndim != 3 or e.shape[1] < 2:
        raise UserError(f"need (prompts, images >= 2, d) embeddings; got {e.shape}")
    e = e / np.linalg.norm(e, axis=2, keepdims=True)
    i, j = pairs(e.shape[1])
    return (e[:, i] * e[:, j]).sum(-1).mean(axis=1)


# ------------------------------------------------------------------ per-prompt means

@dataclasses.dataclass
class MeanCI:
    """The mean of per-prompt values with its bootstrap percentile interval."""

    mean: float
    low: float
    high: float
    n: int
    n_boot: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def bootstrap_mean_ci(values, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> MeanCI:
    """Mean of per-prompt values (NaN ones left out) and its percentile CI over
    `n_boot` resamples of prompts (rv2's seeded multinomial resamples)."""
    v = np.asarray(values, np.float64).ravel()
    v = v[np.isfinite(v)]
    n = v.size
    if n == 0:
        return MeanCI(float("nan"), float("nan"), float("nan"), 0, n_boot)
    est = float(v.mean())
    if n_boot <= 0 or n < 2:
        return MeanCI(est, float("nan"), float("nan"), n, n_boot)
    res = np.concatenate([w @ v / n for w in bootstrap_weights(n, n_boot, seed)])
    ci: CI = percentile_ci(est, res, level)
    return MeanCI(est, ci.low, ci.high, n, n_boot)
