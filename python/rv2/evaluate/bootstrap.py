"""Case or patient bootstrap with multinomial weights, shared by labels, models and subgroups.

Resampling n cases with replacement is the same as weighting each case by how
often it was drawn (bincount of the draws). With several images per patient the
unit is the patient (`clusters`): U patients are drawn with replacement and
every image of a patient counts as often as the patient was drawn; the kernels
take the (B, U) patient counts and each case's patient code, so the patient
bootstrap costs no more than the image one. The weights come in chunks of rows
(memory stays bounded: rows * n * 16 bytes per chunk, never a B x n float64
matrix) from a seeded counter-based stream (streams.py), so the same seed gives
the same resamples for every label, every model of a paired comparison and every
subgroup, whatever the chunk size. The native kernel draws each block of 16
resamples itself and walks every score row (and subgroup, and weighted count
column) over it while it is in cache: no weight matrix is written at all; the
chunks are the twin's.
Resamples where a metric is undefined stay NaN; CIs use the percentile method over
the valid resamples and report their share.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from rv2.errors import UserError
from rv2.evaluate import streams
from rv2.evaluate.kernels import _native_op, boot_auc_ap, rank_order
from rv2.evaluate.streams import check_seed
from rv2.evaluate.validate import as_binary_labels, as_scores, check_lengths

CHUNK_BYTES = 64 << 20


BLOCK = 16  # resamples per native SIMD block


def chunk_rows(n: int, total: int, budget: int = CHUNK_BYTES) -> int:
    """Resamples per chunk: draws (int64), counts (int32) and the native kernel's
    transposed float32 copy, 16 bytes per case and resample, fit `budget`; a
    multiple of BLOCK where possible."""
    rows = max(1, budget // max(1, 16 * n))
    if rows >= BLOCK:
        rows = rows // BLOCK * BLOCK
    return int(min(total, rows))


def resample_indices(n: int, n_boot: int, seed: int = 0, chunk: int | None = None
                     ) -> Iterator[np.ndarray]:
    """Bootstrap draws as (rows, n) int64 index arrays, chunk by chunk.

    Resample r is drawn from the seeded counter-based stream (streams.py), so the
    draws do not depend on chunking, threads or the native build; the kernels that
    draw their own resamples (resample_auc_ap) draw these very ones.
    """
    seed = check_seed(seed)
    chunk = chunk or chunk_rows(n, n_boot)
    for done in range(0, n_boot, chunk):
        yield streams.boot_draws(seed, done, min(chunk, n_boot - done), n)


def weights_from_indices(idx: np.ndarray, n: int, *, native: bool | None = None) -> np.ndarray:
    """(rows, n) draws -> (rows, n) int32 counts of each case (native row-wise bincount)."""
    op = _native_op("bootstrap_counts", native)
    idx = np.ascontiguousarray(idx, np.int64)
    if op is not None and idx.ndim == 2 and idx.shape[1] == n:
        return op(idx)
    return streams.counts_of(idx, n)


def bootstrap_weights(n: int, n_boot: int, seed: int = 0, chunk: int | None = None, *,
                      native: bool | None = None) -> Iterator[np.ndarray]:
    """(rows, n) int32 multinomial counts, the same resamples as resample_indices."""
    seed = check_seed(seed)
    chunk = chunk or chunk_rows(n, n_boot)
    op = _native_op("boot_counts", native)
    for done in range(0, n_boot, chunk):
        c = min(chunk, n_boot - done)
        yield op(seed, done, c, n) if op is not None else streams.boot_counts(seed, done, c, n)


@dataclasses.dataclass(frozen=True)
class CI:
    """A point estimate with its bootstrap interval (percentile unless `method` says)."""

    estimate: float
    low: float
    high: float
    level: float
    valid_share: float  # share of resamples where the statistic was defined
    method: str = "percentile"
    reason: str | None = None  # why low/high are missing, when they are

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _missing_reason(estimate: float, n_valid: int, n: int) -> str | None:
    if not np.isfinite(estimate):
        return "undefined at the point estimate"
    if n_valid == 0:
        return f"undefined in all {n} resamples"
    return None


def percentile_ci(estimate: float, resampled: np.ndarray, level: float = 0.95) -> CI:
    """Percentile CI over the finite values of `resampled` (NaN when none, with a reason)."""
    vals = np.asarray(resampled, np.float64).ravel()
    ok = np.isfinite(vals)
    share = float(ok.mean()) if vals.size else 0.0
    reason = _missing_reason(estimate, int(ok.sum()), vals.size)
    if reason:
        return CI(float(estimate), float("nan"), float("nan"), level, share, reason=reason)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(vals[ok], [tail, 100 - tail])
    return CI(float(estimate), float(lo), float(hi), level, share)


def basic_ci(estimate: float, resampled: np.ndarray, level: float = 0.95,
             lower: float | None = None) -> CI:
    """Basic (pivotal) bootstrap CI: [2 t - q_hi, 2 t - q_lo], clipped below at `lower`.

    It reflects the resampling distribution about the estimate, so a statistic
    that resampling biases upward (a max - min gap) is not pushed up with it.
    """
    p = percentile_ci(estimate, resampled, level)
    if p.reason:
        return dataclasses.replace(p, method="basic")
    lo, hi = 2 * p.estimate - p.high, 2 * p.estimate - p.low
    if lower is not None:
        lo, hi = max(lo, lower), max(hi, lower)
    return CI(p.estimate, float(lo), float(hi), level, p.valid_share, method="basic")


UNDEFINED_RULES = {
    "skip": "labels undefined in the set (one class only) are left out of the macro",
    "zero": "labels undefined in the set (one class only) score 0 and are averaged in "
            "(torchmetrics' convention)",
}


def cluster_codes(ids) -> tuple[np.ndarray, int]:
    """(n,) int32 unit codes and the number of units from per-case ids (e.g.
    patient_id); a missing id (None/NaN/"") makes the case its own unit."""
    import pandas as pd

    s = pd.Series(np.asarray(ids, dtype=object)).astype("string")
    missing = s.isna() | (s == "")
    s = s.where(~missing, "__row" + pd.Series(np.arange(len(s))).astype("string"))
    codes, uniques = pd.factorize(s.to_numpy(), sort=False)
    return codes.astype(np.int32), len(uniques)


def macro(values: np.ndarray, defined: np.ndarray, undefined: str = "skip") -> np.ndarray:
    """Mean over the label axis (-2) of the labels `defined` (L, G) at the point.

    values: (..., L, G). undefined="skip": a label outside `defined` is ignored;
    if a defined one is NaN in a resample, that resample's macro is NaN (the
    macro keeps one meaning across resamples). NaN for a group with no defined
    label. undefined="zero": every label enters, an undefined value as 0.
    """
    if undefined == "zero":
        return np.nan_to_num(values, nan=0.0).mean(axis=-2)
    if undefined != "skip":
        raise UserError(f"undefined-label rule must be 'skip' or 'zero', got {undefined!r}")
    d = defined.astype(bool)
    k = d.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(d, values, 0.0).sum(axis=-2)
        out = s / k
    out = np.where(k > 0, out, np.nan)
    bad = (np.isnan(values) & d).any(axis=-2)
    return np.where(bad, np.nan, out)


@dataclasses.dataclass
class Resampled:
    """AUROC / AP of M models x L labels x G groups: at the point and per resample."""

    point_auc: np.ndarray  # (M, L, G)
    point_ap: np.ndarray
    auc: np.ndarray        # (M, B, L, G)
    ap: np.ndarray
    extra: dict            # name -> (point (..., G), resampled (..., B, G)) weighted counts


def resample_auc_ap(labels: np.ndarray, scores: Sequence[np.ndarray], *, n_boot: int = 1000,
                    seed: int = 0, groups: np.ndarray | None = None, n_groups: int = 1,
                    counts: dict[str, np.ndarray] | None = None, chunk: int | None = None,
                    clusters=None, progress: bool = False,
                    native: bool | None = None) -> Resampled:
    """Bootstrap AUROC and AP for several models on shared resamples.

    labels: (n, L) 1/0/NaN; scores: M arrays (n, L); groups: (K, n) int32
    codes (-1 none) into n_groups groups (None: one group of all cases);
    counts: name -> (n, G) 0/1 indicator matrices whose weighted column sums
    are wanted per resample (e.g. underdiagnosis numerators and denominators);
    clusters: one id per case (e.g. patient_id): resample these units, all
    cases of a drawn unit together (None: resample cases).
    """
    seed = check_seed(seed)
    labels = np.asarray(labels, np.float64)
    n, L = labels.shape
    M = len(scores)
    if n == 0:
        raise UserError("resample_auc_ap: no cases to resample (empty labels)")
    if groups is None:
        groups, n_groups = np.zeros((1, n), np.int32), 1
    groups = np.ascontiguousarray(np.atleast_2d(groups), np.int32)
    counts = counts or {}
    cl, U = (None, n) if clusters is None else cluster_codes(clusters)
    if cl is not None and cl.shape != (n,):
        raise UserError(f"clusters has {cl.shape[0]} entries for {n} cases")
    # all models x labels in one kernel call: row m * L + j
    S_scores = np.ascontiguousarray(np.concatenate([np.asarray(s, np.float64).T for s in scores]))
    S_labels = np.ascontiguousarray(np.tile(labels.T, (M, 1)))
    auc = np.empty((M, n_boot, L, n_groups))
    ap = np.empty((M, n_boot, L, n_groups))
    mats = {k: np.asarray(v, np.float32) for k, v in counts.items()}
    for k, v in mats.items():
        if v.ndim != 2 or v.shape[0] != n:
            raise UserError(f"counts[{k!r}] must be (n, G) with n = {n}, got {v.shape}")
    extra_b = {k: np.empty(v.shape[:-2] + (n_boot, v.shape[-1])) for k, v in mats.items()}
    extra_p = {k: v.sum(axis=-2).astype(np.float64) for k, v in mats.items()}
    if cl is not None:  # per-unit sums: a unit's weight multiplies all its cases
        for k, v in mats.items():
            agg = np.zeros((U, v.shape[-1]), np.float32)
            np.add.at(agg, cl, v)
            mats[k] = agg
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_boot, desc="bootstrap", unit="resample")
    seeded = _native_op("boot_auc_ap_seeded", native)
    if seeded is not None:
        # resamples drawn in the kernel, point estimates and weighted counts on the
        # way; chunks only pace the bar, and then share one sort
        one = n_groups == 1 and groups.shape[0] == 1 and not groups.any()
        names = list(mats)
        sums = (np.ascontiguousarray(np.concatenate([mats[k] for k in names], axis=1), np.float64)
                if names else None)
        step = 256 if bar is not None else max(n_boot, 1)
        order = rank_order(S_scores, S_labels) if n_boot > step else None
        for b0 in range(0, max(n_boot, 1), step):
            b1 = min(n_boot, b0 + step)
            a, p, pa, pp, ex = seeded(S_scores, S_labels, order, seed, b0, b1 - b0, cl, U, 255,
                                      None if one else groups, n_groups, sums)
            auc[:, b0:b1] = a.reshape(M, L, b1 - b0, n_groups).transpose(0, 2, 1, 3)
            ap[:, b0:b1] = p.reshape(M, L, b1 - b0, n_groups).transpose(0, 2, 1, 3)
            c0 = 0
            for k in names:
                c1 = c0 + mats[k].shape[-1]
                extra_b[k][..., b0:b1, :] = ex[:, c0:c1]
                c0 = c1
            if bar is not None:
                bar.update(b1 - b0)
        if bar is not None:
            bar.close()
        return Resampled(pa.reshape(M, L, n_groups), pp.reshape(M, L, n_groups), auc, ap,
                         {k: (extra_p[k], extra_b[k]) for k in mats})

    # the twin: weights chunk by chunk (the same resamples), then the kernels
    order = rank_order(S_scores, S_labels, native=native)  # one sort per row for all chunks
    ones = np.ones((1, n), np.int32)
    a, p = boot_auc_ap(S_scores, S_labels, ones, groups, n_groups, order=order, native=native)
    point_auc = a[:, 0].reshape(M, L, n_groups)
    point_ap = p[:, 0].reshape(M, L, n_groups)
    b0 = 0
    for w in bootstrap_weights(U, n_boot, seed, chunk, native=native):
        b1 = b0 + w.shape[0]
        a, p = boot_auc_ap(S_scores, S_labels, w, groups, n_groups, order=order, cluster=cl,
                           native=native)
        auc[:, b0:b1] = a.reshape(M, L, b1 - b0, n_groups).transpose(0, 2, 1, 3)
        ap[:, b0:b1] = p.reshape(M, L, b1 - b0, n_groups).transpose(0, 2, 1, 3)
        if mats:
            wf = w.astype(np.float32)
            for k, v in mats.items():
                # counts are integers < 2**24, exact in float32
                extra_b[k][..., b0:b1, :] = np.rint(wf @ v)
        if bar is not None:
            bar.update(b1 - b0)
        b0 = b1
    if bar is not None:
        bar.close()
    return Resampled(point_auc, point_ap, auc, ap,
                     {k: (extra_p[k], extra_b[k]) for k in mats})


def bootstrap_ci(y_true, scores, metric: str = "auroc", *, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95, clusters=None, native: bool | None = None) -> CI:
    """Percentile bootstrap CI of AUROC ("auroc") or average precision ("ap") of one label.

    y_true: 1/0 with -1/NaN unknown (left out); scores: one float per case;
    clusters: one id per case (e.g. patient_id) to resample patients, not images.
    """
    if metric not in ("auroc", "ap"):
        raise UserError(f"metric must be 'auroc' or 'ap', got {metric!r}")
    y = as_binary_labels(y_true)
    check_lengths("bootstrap_ci", y_true=y, scores=scores, clusters=clusters)
    s = as_scores(scores, "scores", y)
    if s.shape != y.shape or y.ndim != 1:
        raise UserError(f"bootstrap_ci: y_true {y.shape} and scores {s.shape} must be 1-D "
                         "and of equal length")
    r = resample_auc_ap(y[:, None], [s[:, None]], n_boot=n_boot, seed=seed, clusters=clusters,
                        native=native)
    point, res = (r.point_auc, r.auc) if metric == "auroc" else (r.point_ap, r.ap)
    return percentile_ci(float(point[0, 0, 0]), res[0, :, 0, 0], level)


def bootstrap_macro_ci(y_true, scores, metric: str = "auroc", *, n_boot: int = 1000,
                       seed: int = 0, level: float = 0.95, clusters=None,
                       undefined: str = "skip") -> CI:
    """CI of the macro AUROC or AP; y_true, scores: (n, L). undefined: "skip" averages
    the labels defined at the point, "zero" scores undefined labels 0 (UNDEFINED_RULES)."""
    y = as_binary_labels(y_true)
    check_lengths("bootstrap_macro_ci", y_true=y, scores=scores, clusters=clusters)
    s = as_scores(scores, "scores", y)
    if y.ndim != 2 or s.shape != y.shape:
        raise UserError(f"bootstrap_macro_ci: y_true {y.shape} and scores {s.shape} must be "
                         "(n, L)")
    r = resample_auc_ap(y, [s], n_boot=n_boot, seed=seed, clusters=clusters)
    point, res = (r.point_auc, r.auc) if metric == "auroc" else (r.point_ap, r.ap)
    defined = np.isfinite(point[0])
    return percentile_ci(float(macro(point[0], defined, undefined)[0]),
                         macro(res[0], defined, undefined)[:, 0], level)
