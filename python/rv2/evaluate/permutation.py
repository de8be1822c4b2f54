"""Paired permutation test of an AUPRC (or AUROC) difference.

Each permutation swaps the two models' outputs case by case with probability
1/2 (one swap vector per permutation, shared by all labels so the macro stays
paired), recomputes the difference, and p = (1 + #{|d*| >= |d_obs|}) / (R + 1).

What is swapped (`swap`):
- "rank" (default): each model's within-model percentile ranks (midrank / k
  over the k cases known for the label). AUROC and AP depend on the scores only
  through their order, so the observed values are unchanged, while swaps no
  longer mix two scales: with raw scores, a model whose outputs crowd near 0
  swapped with one spread over [0, 1] makes every permuted ranking a blend
  dominated by the wider scale, and the test loses power.
- "score": the raw scores (the textbook form).
A tolerance of 1e-12 absorbs float noise in the comparison. The swaps come
from a seeded counter-based stream (streams.py); the native kernel draws them
itself, 16 permutations per word block, and sorts the pooled scores of each label
once for every permutation (the twin: swap_chunks and kernels.perm_auc_ap).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from rv2.errors import UserError
from rv2.evaluate import streams
from rv2.evaluate.kernels import _native_op, boot_auc_ap, perm_auc_ap, rank_order
from rv2.evaluate.streams import check_seed
from rv2.evaluate.validate import as_binary_labels, as_scores, check_lengths

TOL = 1e-12


@dataclasses.dataclass(frozen=True)
class PermutationResult:
    """Observed metric of both models, their difference (a - b) and the p-value."""

    metric: str
    value_a: float
    value_b: float
    diff: float
    p: float
    n_perm: int
    per_label: list | None = None  # for (n, L) input: one dict per label

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def swap_chunks(n: int, n_perm: int, seed: int, chunk: int | None = None, *,
                native: bool | None = None):
    """Seeded (rows, n) uint8 swap indicators, chunk by chunk: the swaps of the
    counter-based stream (streams.py) that perm_auc_ap_seeded draws itself."""
    seed = check_seed(seed)
    # uint8 swaps + the native kernel's byte transposed copy; a multiple of 16
    chunk = chunk or max(1, min(n_perm, (64 << 20) // max(2 * n, 1)))
    chunk = max(streams.BLOCK, chunk // streams.BLOCK * streams.BLOCK)
    op = _native_op("perm_swaps", native)
    for done in range(0, n_perm, chunk):
        c = min(chunk, n_perm - done)
        yield op(seed, done, c, n) if op is not None else streams.perm_swaps(seed, done, c, n)


SWAPS = ("rank", "score")


def percentile_ranks(scores: np.ndarray, labels: np.ndarray, *,
                     native: bool | None = None) -> np.ndarray:
    """Per column, midranks / k among the k cases whose label is known (others 0):
    scipy's rankdata(method="average") / k, from one sort per column."""
    op = _native_op("percentile_ranks", native)
    if op is not None:
        return op(np.ascontiguousarray(scores.T, np.float64),
                  np.ascontiguousarray(labels.T, np.float64)).T
    out = np.zeros(scores.shape, np.float64)
    for j, o in enumerate(rank_order(scores.T, labels.T, native=False)):
        o = o[o >= 0]
        k = o.size
        if not k:
            continue
        s = scores[o, j]
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        ends = np.r_[starts[1:], k]
        # a tie group at descending positions a .. b - 1 holds ascending ranks
        # k - b + 1 .. k - a, whose mean is (2k - a - b + 1) / 2
        mid = (2 * k - starts - ends + 1) / 2
        out[o, j] = np.repeat(mid, ends - starts) / k
    return out


def permutation_diffs(labels: np.ndarray, a: np.ndarray, b: np.ndarray, *, metric: str,
                      n_perm: int, seed: int, swap: str = "rank", native: bool | None = None,
                      progress: bool = False):
    """Observed (L,) metric of a and b and the (R, L) permuted differences a* - b*."""
    if swap not in SWAPS:
        raise UserError(f"swap must be one of {SWAPS}, got {swap!r}")
    seed = check_seed(seed)
    n, L = labels.shape
    col = 1 if metric == "ap" else 0
    diffs = np.empty((n_perm, L))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_perm, desc=f"permutations ({metric})", unit="perm")
    seeded = _native_op("perm_auc_ap_seeded", native)
    if seeded is not None:
        # (L, n) rows; swaps drawn in the kernel, all labels at once, the observed
        # values on the way; chunks only pace the bar
        A, B, Y = (np.ascontiguousarray(x.T, np.float64) for x in (a, b, labels))
        if swap == "rank":
            ranks = _native_op("percentile_ranks", True)
            A, B = ranks(A, Y), ranks(B, Y)
        step = 256 if bar is not None else max(n_perm, 1)
        for r0 in range(0, max(n_perm, 1), step):  # n_perm = 0: one call, for obs
            r1 = min(n_perm, r0 + step)
            res = seeded(A, B, Y, seed, r0, r1 - r0)
            diffs[r0:r1] = (res[col][:, :, 0] - res[col][:, :, 1]).T  # (L, r, 2) -> (r, L)
            obs = res[2 + col].T  # (L, 2) -> (2, L)
            if bar is not None:
                bar.update(r1 - r0)
    else:
        if swap == "rank":
            a = percentile_ranks(a, labels, native=native)
            b = percentile_ranks(b, labels, native=native)
        # the observed values: both models' point estimates, rows a_1..a_L, b_1..b_L
        rows = np.ascontiguousarray(np.concatenate([a.T, b.T]), np.float64)
        point = boot_auc_ap(rows, np.tile(labels.T, (2, 1)), np.ones((1, n), np.int32),
                            native=native)[col]
        obs = point[:, 0, 0].reshape(2, L)
        r0 = 0
        for sw in swap_chunks(n, n_perm, seed, native=native):
            r1 = r0 + sw.shape[0]
            for j in range(L):
                res = perm_auc_ap(a[:, j], b[:, j], labels[:, j], sw, native=native)[col]
                diffs[r0:r1, j] = res[:, 0] - res[:, 1]
            if bar is not None:
                bar.update(r1 - r0)
            r0 = r1
    if bar is not None:
        bar.close()
    return obs, diffs


def permutation_p(observed: float, permuted: np.ndarray) -> float:
    """(1 + #{|d*| >= |d_obs|}) / (R + 1); NaN when the observed difference is NaN."""
    if not np.isfinite(observed):
        return float("nan")
    d = np.asarray(permuted, np.float64)
    d = d[np.isfinite(d)]
    return float((1 + np.count_nonzero(np.abs(d) >= abs(observed) - TOL)) / (d.size + 1))


def permutation_test(y_true, scores_a, scores_b, metric: str = "ap", *, n_perm: int = 1000,
                     seed: int = 0, swap: str = "rank",
                     native: bool | None = None) -> PermutationResult:
    """Paired permutation test of metric(a) - metric(b) ("ap" or "auroc").

    1-D input: one label. (n, L) input: the macro over labels defined for both
    models (the result's value_a / value_b / diff / p), and per_label results.
    swap: "rank" (within-model percentile ranks, default) or "score" (raw scores).
    """
    if metric not in ("ap", "auroc"):
        raise UserError(f"metric must be 'ap' or 'auroc', got {metric!r}")
    y = as_binary_labels(y_true)
    check_lengths("permutation_test", y_true=y, scores_a=scores_a, scores_b=scores_b)
    a = as_scores(scores_a, "scores_a", y)
    b = as_scores(scores_b, "scores_b", y)
    if not (a.shape == b.shape == y.shape) or y.ndim not in (1, 2):
        raise UserError(f"permutation_test: y_true {y.shape}, scores_a {a.shape}, scores_b "
                         f"{b.shape} must match, 1-D or (n, L)")
    single = y.ndim == 1
    if single:
        y, a, b = y[:, None], a[:, None], b[:, None]
    obs, diffs = permutation_diffs(y, a, b, metric=metric, n_perm=n_perm, seed=seed,
                                   swap=swap, native=native)
    defined = np.isfinite(obs).all(axis=0)
    per = [dict(label=j, value_a=float(obs[0, j]), value_b=float(obs[1, j]),
                diff=float(obs[0, j] - obs[1, j]),
                p=permutation_p(obs[0, j] - obs[1, j], diffs[:, j]))
           for j in range(y.shape[1])]
    if single:
        d = per[0]
        return PermutationResult(metric, d["value_a"], d["value_b"], d["diff"], d["p"], n_perm)
    if not defined.any():
        nan = float("nan")
        return PermutationResult(metric, nan, nan, nan, nan, n_perm, per)
    va, vb = float(obs[0, defined].mean()), float(obs[1, defined].mean())
    dm = diffs[:, defined].mean(axis=1)
    return PermutationResult(metric, va, vb, va - vb, permutation_p(va - vb, dm), n_perm, per)
