"""Point AUROC and average precision (tie-aware, NaN when undefined) on arrays."""
from __future__ import annotations

import numpy as np

from rv2.errors import UserError
from rv2.evaluate.fairness import _codes
from rv2.evaluate.kernels import boot_auc_ap
from rv2.evaluate.validate import as_binary_labels, as_scores, check_lengths


def _point(y_true, scores, which: int) -> float:
    y = as_binary_labels(y_true)
    check_lengths(("auroc", "average_precision")[which], y_true=y, scores=scores)
    s = as_scores(scores, "scores", y)
    if y.ndim != 1 or s.shape != y.shape:
        raise UserError(f"y_true {y.shape} and scores {s.shape} must be 1-D, equal length")
    out = boot_auc_ap(s, y, np.ones((1, y.size), np.int32))
    return float(out[which][0, 0])


def auroc(y_true, scores) -> float:
    """AUROC with ties counted 1/2; NaN without positives or negatives."""
    return _point(y_true, scores, 0)


def average_precision(y_true, scores) -> float:
    """Step-wise average precision (as scikit-learn); NaN without positives or negatives."""
    return _point(y_true, scores, 1)


def subgroup_auroc(y_true, scores, groups) -> dict:
    """{subgroup: macro AUROC over the labels defined in it}; y_true, scores: (n, L) or (n,)."""

    y = as_binary_labels(y_true)
    check_lengths("subgroup_auroc", y_true=y, scores=scores, groups=groups)
    s = as_scores(scores, "scores", y)
    if y.ndim == 1:
        y, s = y[:, None], s[:, None]
    codes, names = _codes(groups)
    G = len(names)
    vals = np.empty((y.shape[1], G))
    ones = np.ones((1, y.shape[0]), np.int32)
    for j in range(y.shape[1]):
        vals[j] = boot_auc_ap(s[:, j], y[:, j], ones, codes[None, :], max(G, 1))[0][0, :G]
    out = {}
    for g, name in enumerate(names):
        v = vals[:, g]
        out[name] = float(v[np.isfinite(v)].mean()) if np.isfinite(v).any() else float("nan")
    return out
