"""One decision threshold per label, maximizing F1 on validation.

Rule: a prediction is positive when `p >= threshold`. Candidates are the
distinct predicted scores of the label's validation cases (each one makes a
different set of positives). Tie rule: among candidates with the same maximal
F1 (compared exactly: F1 = 2TP / (TP + FP + P) is a ratio of integers and
IEEE division rounds equal ratios to equal floats), the LARGEST threshold is
kept, i.e. the fewest positive calls. A label with no positive validation case
has no defined F1; it gets threshold 0.5 and is listed in `fallback`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from rv2.errors import UserError

RULE = ">="
TIE_RULE = ("among thresholds reaching the maximal F1 (exact integer-ratio comparison), "
            "the largest is kept; candidates are the distinct validation scores")
FALLBACK_THRESHOLD = 0.5


def best_f1_threshold(y, p) -> tuple[float, float, bool]:
    """(threshold, f1, defined) for one label; NaN entries of y are ignored."""
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise UserError(f"y and p differ in shape: {y.shape} vs {p.shape}")
    keep = ~np.isnan(y)
    y, p = y[keep], p[keep]
    if np.isnan(p).any():
        raise UserError("scores contain NaN")
    n_pos = int((y == 1).sum())
    if n_pos == 0:
        return FALLBACK_THRESHOLD, float("nan"), False
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], (y[order] == 1)
    tp = np.cumsum(ys)
    fp = np.cumsum(~ys)
    # the last index of each run of equal scores: thresholding at that score
    # makes every case up to it positive
    last = np.r_[np.nonzero(ps[1:] != ps[:-1])[0], len(ps) - 1]
    f1 = 2.0 * tp[last] / (tp[last] + fp[last] + n_pos)
    best = f1.max()
    # candidates are in descending threshold order: the first maximum is the largest threshold
    k = int(np.nonzero(f1 == best)[0][0])
    return float(ps[last[k]]), float(best), True


def best_f1_thresholds(y, p, labels: Sequence[str] | None = None) -> dict:
    """Per-label thresholds for label matrix y (N x L, NaN = masked) and scores p.

    Returns {"labels", "thresholds": {label: t}, "f1": {label: f1 or None},
    "n_pos": {...}, "n": {...}, "fallback": [labels without positives], "rule", "tie_rule"}.
    """
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if y.ndim == 1:
        y, p = y[:, None], p[:, None]
    if y.shape != p.shape:
        raise UserError(f"y and p differ in shape: {y.shape} vs {p.shape}")
    labels = list(labels) if labels is not None else [str(j) for j in range(y.shape[1])]
    if len(labels) != y.shape[1]:
        raise UserError(f"{len(labels)} labels for {y.shape[1]} columns")
    out = {"labels": labels, "thresholds": {}, "f1": {}, "n_pos": {}, "n": {}, "fallback": [],
           "rule": RULE, "tie_rule": TIE_RULE, "fallback_threshold": FALLBACK_THRESHOLD}
    for j, name in enumerate(labels):
        t, f1, defined = best_f1_threshold(y[:, j], p[:, j])
        out["thresholds"][name] = t
        out["f1"][name] = f1 if defined else None
        out["n_pos"][name] = int(np.nansum(y[:, j] == 1))
        out["n"][name] = int((~np.isnan(y[:, j])).sum())
        if not defined:
            out["fallback"].append(name)
    return out


def binarize(p, thresholds: dict, labels: Sequence[str]) -> np.ndarray:
    """Apply the saved rule (p >= t) column by column."""
    p = np.asarray(p, dtype=np.float64)
    t = np.array([thresholds[name] for name in labels], dtype=np.float64)
    return p >= t[None, :]
