"""Subgroup AUROC, fairness gap and underdiagnosis on arrays.

- Subgroup AUROC: macro AUROC over the labels defined within the subgroup.
- Fairness gap: max - min subgroup AUROC over subgroups where it is defined.
- Underdiagnosis rate of subgroup g: the false-positive rate of the binarized
  No Finding prediction, #{pred NF = 1, true NF = 0, g} / #{true NF = 0, g};
  NaN when the denominator is 0 (never 1). Gap = max - min over defined ones.
- Subgroups with fewer than `min_count` cases (or, for underdiagnosis, fewer
  than `min_count` true-NF-negative cases) are reported with their counts but
  left out of the gaps. min_count = 16 matches the references' "more than 15".
- CIs of gaps: the gap is recomputed inside each bootstrap resample over the
  subgroups that entered the point gap (NaN resamples are dropped and counted).
  A max - min over noisy subgroup values is biased upward, and resampling adds
  the same bias again, so the percentile interval of a gap sits above the gap
  itself; the default interval is the basic (pivotal) one, which reflects the
  resampled gaps about the estimate (`gap_ci="percentile"` for the plain one).
  When a CI is missing, `reason` says why (which subgroups were undefined in
  how many resamples).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from rv2.errors import UserError
from rv2.evaluate.bootstrap import CI, basic_ci, macro, percentile_ci, resample_auc_ap
from rv2.evaluate.validate import as_binary_labels, as_scores

GAP_CIS = ("basic", "percentile")


def gap(values) -> float:
    """max - min over finite values; NaN with fewer than two."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return float(v.max() - v.min()) if v.size >= 2 else float("nan")


def _gap_rows(mat: np.ndarray) -> np.ndarray:
    """Row-wise gap of (B, G) where every column must be finite, else NaN."""
    if mat.shape[1] < 2:
        return np.full(mat.shape[0], np.nan)
    out = mat.max(axis=1) - mat.min(axis=1)
    return np.where(np.isfinite(mat).all(axis=1), out, np.nan)


def fairness_gap(subgroup_auroc) -> float:
    """Fairness gap from a mapping or array of subgroup AUROCs (NaN ignored)."""
    vals = list(subgroup_auroc.values()) if isinstance(subgroup_auroc, dict) else subgroup_auroc
    return gap(vals)


def underdiagnosis_gap(rates) -> float:
    """Underdiagnosis gap from a mapping or array of subgroup rates (NaN ignored)."""
    vals = list(rates.values()) if isinstance(rates, dict) else rates
    return gap(vals)


def _codes(groups) -> tuple[np.ndarray, list]:
    g = np.asarray(groups, dtype=object)
    keys = [k for k in dict.fromkeys(g.tolist()) if k is not None and k == k]
    try:
        keys = sorted(keys)
    except TypeError:
        pass
    index = {k: i for i, k in enumerate(keys)}
    codes = np.array([index.get(k, -1) if (k is not None and k == k) else -1 for k in g],
                     np.int32)
    return codes, keys


def underdiagnosis_rate(no_finding_true, no_finding_pred, groups=None) -> dict:
    """Underdiagnosis rate per subgroup (or overall when groups is None).

    no_finding_true: 1/0 (-1/NaN unknown, left out); no_finding_pred: binarized
    prediction (bool or 0/1). Returns {group: rate} with NaN where undefined.
    """
    t = as_binary_labels(no_finding_true, "no_finding_true")
    p = np.asarray(no_finding_pred).astype(bool)
    if p.shape != t.shape:
        raise UserError(f"no_finding_pred {p.shape} and no_finding_true {t.shape} differ")
    codes, keys = _codes(groups if groups is not None else np.full(t.shape, "all", object))
    out = {}
    for i, k in enumerate(keys):
        neg = (codes == i) & (t == 0)
        den = int(neg.sum())
        out[k] = float((neg & p).sum() / den) if den else float("nan")
    return out


@dataclasses.dataclass
class FairnessResult:
    """Per-subgroup rows and the gaps with bootstrap CIs."""

    subgroups: list            # dicts: group, n, positives, n_nf_neg, auroc, ci, ud_rate, ...
    fairness_gap: CI
    underdiagnosis_gap: CI | None

    def to_dict(self) -> dict:
        return {"subgroups": self.subgroups, "fairness_gap": self.fairness_gap.to_dict(),
                "underdiagnosis_gap": (self.underdiagnosis_gap.to_dict()
                                       if self.underdiagnosis_gap else None)}


def gap_ci(estimate: float, resampled_groups: np.ndarray, names: list, level: float,
           method: str = "basic") -> CI:
    """CI of a max - min gap from (B, G) resampled subgroup values (G = the subgroups
    in the point gap); a missing CI names the subgroups that were undefined."""
    if method not in GAP_CIS:
        raise UserError(f"gap_ci must be one of {GAP_CIS}, got {method!r}")
    res = _gap_rows(resampled_groups)
    ci = (basic_ci(estimate, res, level, lower=0.0) if method == "basic"
          else percentile_ci(estimate, res, level))
    if ci.reason and np.isfinite(estimate) and resampled_groups.size:
        share = np.isnan(resampled_groups).mean(axis=0)
        worst = [f"{names[g]} ({share[g]:.0%})" for g in np.argsort(-share) if share[g] > 0][:3]
        ci = dataclasses.replace(ci, reason=f"{ci.reason}: a subgroup had a label with one "
                                            f"class only; undefined share: {', '.join(worst)}")
    elif ci.reason and not np.isfinite(estimate):
        ci = dataclasses.replace(ci, reason="fewer than two subgroups with a defined value "
                                            "and enough cases")
    return ci


def subgroup_metrics(point_auc: np.ndarray, res_auc: np.ndarray, labels: np.ndarray,
                     member: np.ndarray, names: list, *, min_count: int, level: float,
                     nf_true: np.ndarray | None = None, ud_point=None, ud_res=None,
                     undefined: str = "skip", gap_method: str = "basic") -> FairnessResult:
    """Assemble subgroup rows and gaps from resampled arrays of ONE model.

    point_auc (L, G), res_auc (B, L, G); member (n, G) bool; ud_point (num,
    den) of shape (G,) each and ud_res (num, den) of shape (B, G) each.
    """
    defined = np.isfinite(point_auc)
    p_macro = macro(point_auc, defined, undefined)
    r_macro = macro(res_auc, defined, undefined)
    n_g = member.sum(axis=0)
    pos_g = ((labels == 1)[:, :, None] & member[:, None, :]).sum(axis=0)  # (L, G)
    use_auc = (n_g >= min_count) & np.isfinite(p_macro)
    rows = []
    ud_rate = ud_r = None
    use_ud = np.zeros(len(names), bool)
    if ud_point is not None:
        num, den = ud_point
        with np.errstate(invalid="ignore", divide="ignore"):
            ud_rate = np.where(den > 0, num / den, np.nan)
            ud_r = np.where(ud_res[1] > 0, ud_res[0] / ud_res[1], np.nan)
        use_ud = (n_g >= min_count) & (den >= min_count) & np.isfinite(ud_rate)
    for g, name in enumerate(names):
        row = {"group": name, "n": int(n_g[g]),
               "positives": {int(j): int(pos_g[j, g]) for j in range(labels.shape[1])},
               "labels_defined": int(defined[:, g].sum()),
               "auroc": percentile_ci(float(p_macro[g]), r_macro[:, g], level).to_dict(),
               "in_fairness_gap": bool(use_auc[g])}
        if nf_true is not None:
            row["n_nf_negative"] = int(((nf_true == 0) & member[:, g]).sum())
            row["n_nf_positive"] = int(((nf_true == 1) & member[:, g]).sum())
        if ud_rate is not None:
            row["underdiagnosis"] = percentile_ci(float(ud_rate[g]), ud_r[:, g], level).to_dict()
            row["in_underdiagnosis_gap"] = bool(use_ud[g])
        rows.append(row)
    sel = [names[g] for g in np.flatnonzero(use_auc)]
    fg = gap_ci(gap(p_macro[use_auc]), r_macro[:, use_auc], sel, level, gap_method)
    ug = None
    if ud_rate is not None:
        sel = [names[g] for g in np.flatnonzero(use_ud)]
        ug = gap_ci(gap(ud_rate[use_ud]), ud_r[:, use_ud], sel, level, gap_method)
    return FairnessResult(rows, fg, ug)


def fairness_report(y_true, scores, groups, *, no_finding_true=None, no_finding_pred=None,
                    n_boot: int = 1000, seed: int = 0, min_count: int = 16,
                    level: float = 0.95, clusters=None, undefined: str = "skip",
                    gap_method: str = "basic") -> FairnessResult:
    """Subgroup macro AUROC, fairness gap and underdiagnosis gap with bootstrap CIs.

    y_true, scores: (n, L) (or 1-D for one label); groups: one subgroup name per
    case (None/NaN: in no subgroup); no_finding_true / no_finding_pred (binarized
    No Finding prediction): optional, for the underdiagnosis rows and gap.
    """
    y = as_binary_labels(y_true)
    s = as_scores(scores, "scores", y)
    if y.ndim == 1:
        y, s = y[:, None], s[:, None]
    if s.shape != y.shape:
        raise UserError(f"y_true {y.shape} and scores {s.shape} differ")
    codes, names = _codes(groups)
    if codes.shape[0] != y.shape[0]:
        raise UserError(f"groups has {codes.shape[0]} entries for {y.shape[0]} cases")
    G = len(names)
    member = codes[:, None] == np.arange(G)[None, :]
    counts, nf_t = {}, None
    if no_finding_pred is not None:
        nf_t = as_binary_labels(no_finding_true, "no_finding_true")
        nf_p = np.asarray(no_finding_pred).astype(bool)
        neg = member & (nf_t == 0)[:, None]
        counts = {"ud_num": neg & nf_p[:, None], "ud_den": neg}
    r = resample_auc_ap(y, [s], n_boot=n_boot, seed=seed, groups=codes[None, :], n_groups=G,
                        counts=counts, clusters=clusters)
    ud_point = ud_res = None
    if counts:
        ud_point = (r.extra["ud_num"][0], r.extra["ud_den"][0])
        ud_res = (r.extra["ud_num"][1], r.extra["ud_den"][1])
    return subgroup_metrics(r.point_auc[0], r.auc[0], y, member, names, min_count=min_count,
                            level=level, nf_true=nf_t, ud_point=ud_point, ud_res=ud_res,
                            undefined=undefined, gap_method=gap_method)
