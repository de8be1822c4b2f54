"""Ranking kernels with numpy twins and a dispatcher to rv2._C.

Contracts (the native ops in csrc/stats/ranking.cpp follow them exactly):

- labels are float64: 1 = positive, 0 = negative, anything else (-1, NaN) is
  unknown and left out;
- AUROC = 1 - (discordant pairs + ties / 2) / (P N), counted exactly (int64
  here, integer-valued float64 below 2^53 in the native op) and divided once; AP = (1 / P) sum over distinct thresholds, descending, of
  P_g * TP / (TP + FP) (scikit-learn's step-wise average precision);
- a metric whose set lacks positives or negatives is NaN (never 0).

Every public function here validates its input and calls the native op when
rv2._C is loaded, else the twin (`*_py`). Pass `native=False` to force the twin.
"""
from __future__ import annotations

import numpy as np

from rv2 import _native
from rv2.errors import UserError


def _native_op(name: str, native: bool | None):
    mod = _native.native_module()
    if native is False or mod is None or not hasattr(mod, name):
        if native is True:
            raise RuntimeError(f"native op {name} requested but rv2._C lacks it "
                               f"({_native.NATIVE_ERROR or 'old build: run make native'})")
        return None
    return getattr(mod, name)


def _known(labels: np.ndarray) -> np.ndarray:
    return (labels == 1.0) | (labels == 0.0)


def _check_finite(scores: np.ndarray, labels: np.ndarray, what: str) -> None:
    bad = _known(labels) & ~np.isfinite(scores)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise UserError(f"{what}: score of case {i} is not finite (NaN or infinity)")


def _tie_starts(sorted_scores: np.ndarray) -> np.ndarray:
    if sorted_scores.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])


def _auc_ap_from_groups(gp: np.ndarray, gn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """gp, gn: (B, T) int64 positive / negative weight per tie group, descending."""
    tp = np.cumsum(gp, axis=1)
    fp = np.cumsum(gn, axis=1)
    P = tp[:, -1] if tp.shape[1] else np.zeros(gp.shape[0], np.int64)
    N = fp[:, -1] if fp.shape[1] else np.zeros(gp.shape[0], np.int64)
    disc2 = (2 * gp * (fp - gn) + gp * gn).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(gp > 0, tp / np.maximum(tp + fp, 1), 0.0)
        ap_sum = (gp * prec).sum(axis=1)
        total2 = 2 * P * N
        auc = (total2 - disc2).astype(np.float64) / total2.astype(np.float64)
        ap = ap_sum / P.astype(np.float64)
    undefined = (P == 0) | (N == 0)
    auc[undefined] = np.nan
    ap[undefined] = np.nan
    return auc, ap


def _boot_one_py(scores, labels, weights, groups, n_groups):
    B = weights.shape[0]
    known = np.flatnonzero(_known(labels))
    order = known[np.argsort(-scores[known], kind="stable")]
    s_sorted, pos_sorted = scores[order], labels[order] == 1.0
    g_sorted = groups[:, order]
    auc = np.full((B, n_groups), np.nan)
    ap = np.full((B, n_groups), np.nan)
    w_sorted = weights[:, order].astype(np.int64)
    for g in range(n_groups):
        member = (g_sorted == g).any(axis=0)
        if not member.any():
            continue
        starts = _tie_starts(s_sorted[member])
        wm = w_sorted[:, member]
        pm = pos_sorted[member]
        gp = np.add.reduceat(wm * pm, starts, axis=1)
        gn = np.add.reduceat(wm * ~pm, starts, axis=1)
        auc[:, g], ap[:, g] = _auc_ap_from_groups(gp, gn)
    return auc, ap


def boot_auc_ap_py(scores, labels, weights, groups, n_groups, cluster=None):
    """Twin of _C.boot_auc_ap: scores, labels (S, n) -> (auc, ap), each (S, B, n_groups).

    cluster: (n,) unit of each case, weights then (B, U): a case counts as often
    as its unit (patient) was drawn."""
    scores = np.atleast_2d(np.asarray(scores, np.float64))
    labels = np.atleast_2d(np.asarray(labels, np.float64))
    weights = np.asarray(weights, np.int32)
    groups = np.asarray(groups, np.int32)
    if (weights < 0).any() or (weights >= 1 << 24).any():
        raise UserError("weights must be counts in [0, 2^24)")
    if cluster is not None:
        cluster = np.asarray(cluster, np.int32)
        if cluster.size and (cluster.min() < 0 or cluster.max() >= weights.shape[1]):
            raise UserError("cluster holds a unit outside [0, weights.shape[1])")
        weights = weights[:, cluster]
    for s, y in zip(scores, labels):
        _check_finite(s, y, "boot_auc_ap")
    out = [_boot_one_py(s, y, weights, groups, n_groups) for s, y in zip(scores, labels)]
    shape = (scores.shape[0], weights.shape[0], n_groups)
    if not out:
        return np.empty(shape), np.empty(shape)
    return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])


def rank_order(scores, labels, *, native: bool | None = None) -> np.ndarray:
    """(S, n) int64: per row the known cases by descending score (stable), then -1.

    Pass it to boot_auc_ap(order=...) when the same rows are resampled in many
    chunks, so the native kernel sorts once.
    """
    scores = np.ascontiguousarray(np.atleast_2d(scores), np.float64)
    labels = np.asarray(labels, np.float64)
    if labels.ndim == 1:
        labels = np.broadcast_to(labels, scores.shape)
    if labels.shape != scores.shape:
        raise UserError(f"rank_order: scores {scores.shape} and labels {labels.shape} disagree")
    op = _native_op("rank_order", native)
    if op is not None:
        return op(scores, np.ascontiguousarray(labels))
    out = np.full(scores.shape, -1, np.int64)
    for r, (s, y) in enumerate(zip(scores, labels)):
        known = np.flatnonzero(_known(y))
        _check_finite(s, y, "rank_order")
        out[r, :known.size] = known[np.argsort(-s[known], kind="stable")]
    return out


def boot_auc_ap(scores, labels, weights, groups=None, n_groups: int = 1, *, order=None,
                cluster=None, native: bool | None = None):
    """Weighted AUROC and AP for B weight rows and G case groups.

    scores: (n,) or (S, n) score rows; labels: (n,) or (S, n) (a 1-D label
    vector is shared by all rows); weights: (B, n) non-negative integer counts
    (a row of ones is the point estimate); groups: (K, n) int32 codes in
    [0, n_groups) or -1 (each row one family of groups; a case belongs to every
    group it is coded for; None: one group of all cases). Returns (auc, ap),
    each (B, n_groups) for 1-D scores, else (S, B, n_groups); NaN where undefined.
    order: rank_order(scores, labels), to skip the native sort (checked there).
    cluster: (n,) int32 resampling unit of each case in [0, U) (e.g. patient
    codes); weights are then (B, U), and a case counts as often as its unit.
    """
    one = np.ndim(scores) == 1
    scores = np.ascontiguousarray(np.atleast_2d(scores), np.float64)
    S, n = scores.shape
    labels = np.asarray(labels, np.float64)
    if labels.ndim == 1:
        labels = np.broadcast_to(labels, (S, labels.shape[0]))
    labels = np.ascontiguousarray(labels)
    weights = np.ascontiguousarray(np.atleast_2d(weights), np.int32)
    if groups is None:
        groups, n_groups = np.zeros((1, n), np.int32), 1
    groups = np.ascontiguousarray(np.atleast_2d(groups), np.int32)
    if cluster is not None:
        cluster = np.ascontiguousarray(cluster, np.int32)
    if (labels.shape != (S, n) or groups.shape[1] != n
            or (cluster is None and weights.shape[1] != n)
            or (cluster is not None and cluster.shape != (n,))):
        raise UserError(f"boot_auc_ap: shapes disagree: scores {scores.shape}, labels "
                         f"{labels.shape}, weights {weights.shape}, groups {groups.shape}"
                         + (f", cluster {cluster.shape}" if cluster is not None else ""))
    op = _native_op("boot_auc_ap", native)
    if op is None:
        auc, ap = boot_auc_ap_py(scores, labels, weights, groups, int(n_groups), cluster)
    else:
        if order is not None:
            order = np.ascontiguousarray(np.atleast_2d(order), np.int64)
        auc, ap = op(scores, labels, weights, groups, int(n_groups), order, cluster)
    return (auc[0], ap[0]) if one else (auc, ap)


def perm_auc_ap_py(scores_a, scores_b, labels, swaps):
    """Twin of _C.perm_auc_ap: (auc, ap), each (R, 2) for permuted models A and B."""
    a = np.asarray(scores_a, np.float64)
    b = np.asarray(scores_b, np.float64)
    labels = np.asarray(labels, np.float64)
    swaps = np.asarray(swaps, np.uint8).astype(bool)
    _check_finite(a, labels, "perm_auc_ap")
    _check_finite(b, labels, "perm_auc_ap")
    n, R = a.shape[0], swaps.shape[0]
    pooled = np.r_[a, b]
    plabels = np.r_[labels, labels]
    known = np.flatnonzero(_known(plabels))
    order = known[np.argsort(-pooled[known], kind="stable")]
    starts = _tie_starts(pooled[order])
    pos = plabels[order] == 1.0
    src = (order >= n).astype(np.int64)
    case = order - src * n
    auc = np.empty((R, 2))
    ap = np.empty((R, 2))
    for r in range(R):
        dest = src ^ swaps[r, case].astype(np.int64)
        w = np.stack([dest == 0, dest == 1]).astype(np.int64)  # (2, 2n) membership
        gp = np.add.reduceat(w * pos, starts, axis=1)
        gn = np.add.reduceat(w * ~pos, starts, axis=1)
        auc[r], ap[r] = _auc_ap_from_groups(gp, gn)
    return auc, ap


def perm_auc_ap(scores_a, scores_b, labels, swaps, *, native: bool | None = None):
    """AUROC and AP of both models after case-wise swaps: (auc, ap), each (R, 2)."""
    a = np.ascontiguousarray(scores_a, np.float64)
    b = np.ascontiguousarray(scores_b, np.float64)
    labels = np.ascontiguousarray(labels, np.float64)
    swaps = np.ascontiguousarray(np.atleast_2d(swaps), np.uint8)
    n = a.shape[0]
    if b.shape != (n,) or labels.shape != (n,) or swaps.shape[1] != n:
        raise UserError(f"perm_auc_ap: shapes disagree: a {a.shape}, b {b.shape}, labels "
                         f"{labels.shape}, swaps {swaps.shape}")
    if swaps.size and swaps.max() > 1:
        raise UserError("perm_auc_ap: swaps must be 0 or 1")
    op = _native_op("perm_auc_ap", native)
    if op is None:
        return perm_auc_ap_py(a, b, labels, swaps)
    return op(a, b, labels, swaps)


def delong_placements_py(scores, labels):
    """Twin of _C.delong_placements: (v10 (k, n_pos), v01 (k, n_neg))."""
    scores = np.atleast_2d(np.asarray(scores, np.float64))
    labels = np.asarray(labels, np.float64)
    pos, neg = labels == 1.0, labels == 0.0
    m, nn = int(pos.sum()), int(neg.sum())
    v10 = np.empty((scores.shape[0], m))
    v01 = np.empty((scores.shape[0], nn))
    for r, s in enumerate(scores):
        _check_finite(s, labels, "delong_placements")
        x, y = s[pos], s[neg]
        ys, xs = np.sort(y), np.sort(x)
        below = np.searchsorted(ys, x, "left")
        tied = np.searchsorted(ys, x, "right") - below
        v10[r] = (below.astype(np.float64) + 0.5 * tied) / nn
        below = np.searchsorted(xs, y, "left")
        tied = np.searchsorted(xs, y, "right") - below
        v01[r] = 1.0 - (below.astype(np.float64) + 0.5 * tied) / m
    return v10, v01


def delong_placements(scores, labels, *, native: bool | None = None):
    """DeLong placements of k score rows (k, n) on the same cases."""
    scores = np.ascontiguousarray(np.atleast_2d(scores), np.float64)
    labels = np.ascontiguousarray(labels, np.float64)
    if labels.shape != (scores.shape[1],):
        raise UserError(f"delong_placements: scores {scores.shape} and labels "
                         f"{labels.shape} disagree")
    pos, neg = int((labels == 1.0).sum()), int((labels == 0.0).sum())
    if pos == 0 or neg == 0:
        raise UserError(f"delong_placements: need positives and negatives, got {pos} and {neg}")
    op = _native_op("delong_placements", native)
    if op is None:
        return delong_placements_py(scores, labels)
    return op(scores, labels)
