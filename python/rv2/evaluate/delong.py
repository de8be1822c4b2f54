"""DeLong's test for two correlated AUROCs on the same cases (Sun and Xu 2014).

V10 and V01 are the placements of positives and negatives (kernels.delong_placements);
S = cov(V10) / m + cov(V01) / n (ddof 1); Var(theta_a - theta_b) = S_aa + S_bb - 2 S_ab;
z = (theta_a - theta_b) / sqrt(Var); two-sided p = erfc(|z| / sqrt 2). When both the
difference and its variance are 0, z = 0 and p = 1. Matches R pROC's
`roc.test(paired = TRUE, method = "delong")` (tests/evaluate/test_delong.py).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from rv2.errors import UserError
from rv2.evaluate.bootstrap import cluster_codes
from rv2.evaluate.kernels import delong_placements
from rv2.evaluate.validate import as_binary_labels, as_scores, check_lengths


class _NormalDifference:
    """A paired AUROC difference `diff` with variance `var`, judged on the normal scale."""

    diff: float
    var: float

    def ci(self, level: float = 0.95) -> tuple[float, float]:
        """Normal-approximation CI of auc_a - auc_b."""
        from scipy.stats import norm

        half = float(norm.ppf(0.5 + level / 2)) * math.sqrt(max(self.var, 0.0))
        return self.diff - half, self.diff + half

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def z_and_p(diff: float, var: float) -> tuple[float, float, float]:
    """(var, z, two-sided p); a zero or undefined variance gives z = 0 for no difference
    and an infinite z otherwise."""
    if var <= 0 or not math.isfinite(var):
        var = max(var, 0.0)
        z = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    else:
        z = diff / math.sqrt(var)
    return var, float(z), math.erfc(abs(z) / math.sqrt(2.0))


@dataclasses.dataclass(frozen=True)
class DeLongResult(_NormalDifference):
    """Paired DeLong comparison of model a against model b."""

    auc_a: float
    auc_b: float
    diff: float      # auc_a - auc_b
    var: float       # variance of diff
    z: float
    p: float         # two-sided
    n_pos: int
    n_neg: int


def delong_test(y_true, scores_a, scores_b, *, native: bool | None = None) -> DeLongResult:
    """DeLong test of AUROC(scores_a) vs AUROC(scores_b) on the same cases.

    y_true: 1 positive, 0 negative; -1 or NaN (unknown) cases are left out.
    Raises ValueError with fewer than 2 positives or 2 negatives (the
    covariances need ddof 1), or on NaN/infinite scores of known cases.
    """
    y = as_binary_labels(y_true, "y_true")
    check_lengths("delong_test", y_true=y, scores_a=scores_a, scores_b=scores_b)
    a = as_scores(scores_a, "scores_a", y)
    b = as_scores(scores_b, "scores_b", y)
    if not (a.shape == b.shape == y.shape):
        raise UserError(f"delong_test: y_true {y.shape}, scores_a {a.shape} and scores_b "
                         f"{b.shape} must have one value per case")
    m, n = int((y == 1).sum()), int((y == 0).sum())
    if m < 2 or n < 2:
        raise UserError(f"delong_test: needs at least 2 positives and 2 negatives, got {m} "
                         f"positives and {n} negatives")
    v10, v01 = delong_placements(np.stack([a, b]), y, native=native)
    auc = v10.mean(axis=1)
    s = np.cov(v10, ddof=1) / m + np.cov(v01, ddof=1) / n
    var = float(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    diff = float(auc[0] - auc[1])
    var, z, p = z_and_p(diff, var)
    return DeLongResult(float(auc[0]), float(auc[1]), diff, var, z, p, m, n)


MACRO_METHOD = ("multi-label DeLong: influence-function (Hoeffding) variance of the mean "
                "AUROC difference over labels, cases shared by labels{clustered}; reduces to "
                "DeLong's variance for one label; two-sided normal p")


@dataclasses.dataclass(frozen=True)
class MacroDeLongResult(_NormalDifference):
    """Paired comparison of macro AUROC (mean over labels) of model a against model b."""

    auc_a: float     # macro AUROC of a over the labels in the macro
    auc_b: float
    diff: float
    var: float
    z: float
    p: float
    labels: list     # label indices that entered the comparison
    n_labels: int    # the macro's denominator (more than len(labels) with undefined="zero")
    method: str


def delong_macro_test(y_true, scores_a, scores_b, *, clusters=None, undefined: str = "skip",
                      native: bool | None = None) -> MacroDeLongResult:
    """DeLong test of macro AUROC(a) - macro AUROC(b) on the same cases, labels (n, L).

    Each label's AUROC difference D_j has a per-case influence: for a positive
    i, ((V10a_i - V10b_i) - D_j) / sqrt(m_j (m_j - 1)), for a negative likewise
    with V01 and n_j. A case's influence on the macro is the mean over labels of
    its terms (a case enters every label it is known for), summed per cluster
    (e.g. patient) when `clusters` is given; Var = the sum of squares. For one
    label without clusters this is exactly DeLong's S_aa + S_bb - 2 S_ab.
    Labels need both classes; undefined="skip" leaves the others out of the
    macro, "zero" keeps them in the denominator with a difference of 0.
    """
    y = as_binary_labels(y_true, "y_true")
    check_lengths("delong_macro_test", y_true=y, scores_a=scores_a, scores_b=scores_b,
                  clusters=clusters)
    a = as_scores(scores_a, "scores_a", y)
    b = as_scores(scores_b, "scores_b", y)
    if y.ndim == 1:
        y, a, b = y[:, None], a[:, None], b[:, None]
    if not (a.shape == b.shape == y.shape):
        raise UserError(f"delong_macro_test: y_true {y.shape}, scores_a {a.shape} and "
                         f"scores_b {b.shape} must be (n, L)")
    if undefined not in ("skip", "zero"):
        raise UserError(f"undefined must be 'skip' or 'zero', got {undefined!r}")
    n, L = y.shape
    used = [j for j in range(L) if (y[:, j] == 1).any() and (y[:, j] == 0).any()]
    if not used:
        raise UserError("delong_macro_test: no label has both positives and negatives")
    k = len(used) if undefined == "skip" else L
    infl = np.zeros(n)
    auc = np.zeros(2)
    for j in used:
        yj = y[:, j]
        pos, neg = np.flatnonzero(yj == 1), np.flatnonzero(yj == 0)
        v10, v01 = delong_placements(np.stack([a[:, j], b[:, j]]), yj, native=native)
        th = v10.mean(axis=1)
        auc += th
        d = th[0] - th[1]
        m_, n_ = pos.size, neg.size
        infl[pos] += ((v10[0] - v10[1]) - d) / math.sqrt(m_ * max(m_ - 1, 1)) / k
        infl[neg] += ((v01[0] - v01[1]) - d) / math.sqrt(n_ * max(n_ - 1, 1)) / k
    if clusters is not None:
        codes, U = cluster_codes(clusters)
        infl = np.bincount(codes, weights=infl, minlength=U)
    var = float(np.sum(infl ** 2))
    auc = auc / k
    diff = float(auc[0] - auc[1])
    var, z, p = z_and_p(diff, var)
    method = MACRO_METHOD.format(clustered=", influences summed per patient"
                                 if clusters is not None else "")
    return MacroDeLongResult(float(auc[0]), float(auc[1]), diff, var, z, p, used, k, method)
