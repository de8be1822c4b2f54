"""`evaluate_predictions` and `compare_predictions`: files in, report out.

Both draw ONE set of seeded bootstrap resamples per test set and use it for
every label, model and subgroup, so model differences are paired. Settings that
move the numbers are explicit and named in the report:

- label_policy: what uncertain and blank labels are (default: the policy the
  model was trained with, recorded in its folder; else uncertain=0,blank=0).
  A policy other than the model's is refused unless allow_label_policy_mismatch.
- bootstrap_unit: patient (default where the manifest has patient_id: all
  images of a drawn patient together) or image.
- undefined_label: skip (macro over the labels defined in the set) or zero
  (an undefined label scores 0 and is averaged in, as torchmetrics does).
- per label and macro AUROC and AP with percentile bootstrap CIs;
- subgroups sex x race/ethnicity and sex x age bin: macro AUROC, fairness gap
  (max - min), underdiagnosis rate (FPR of the binarized No Finding prediction
  at the model's saved threshold) and gap, each with CIs (fairness.py; basic
  bootstrap intervals for gaps by default);
- comparisons (model k - baseline, the first --pred): per-label DeLong z and
  p; macro AUROC difference by the multi-label DeLong test (macro_auroc_test,
  or the paired bootstrap z-test) with its percentile CI; AP per label and
  macro by the paired permutation test on within-model ranks
  (permutation_swap); percentile CIs of all differences.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from rv2.config import Config
from rv2.data.label_policy import LabelPolicy
from rv2.data.schema import EVAL_LABELS, STUDY_RACES
from rv2.evaluate import io
from rv2.evaluate.bootstrap import (
    UNDEFINED_RULES,
    cluster_codes,
    macro,
    percentile_ci,
    resample_auc_ap,
)
from rv2.evaluate.delong import MACRO_METHOD, delong_macro_test, delong_test
from rv2.evaluate.streams import STREAM
from rv2.evaluate.fairness import subgroup_metrics
from rv2.evaluate.permutation import permutation_diffs, permutation_p
from rv2.evaluate.report_writer import write_report

log = logging.getLogger(__name__)

SEX_NAMES = {"F": "female", "M": "male"}
STUDY_AGE_BINS = ("18-40", "40-60", "60-80", "80+")
NO_FINDING = "No Finding"


@dataclasses.dataclass
class EvaluateConfig(Config):
    """Settings of `rv2 evaluate` / `rv2 compare` (override with --set key=value)."""

    VERSION = 2
    labels: list[str] = dataclasses.field(default_factory=lambda: list(EVAL_LABELS))
    # None: the policy recorded with the model(s), else uncertain=0,blank=0
    label_policy: str | None = None
    allow_label_policy_mismatch: bool = False
    bootstrap_unit: Literal["patient", "image"] = "patient"  # patient needs manifest patient_id
    undefined_label: Literal["skip", "zero"] = "skip"
    macro_auroc_test: Literal["delong", "bootstrap"] = "delong"
    permutation_swap: Literal["rank", "score"] = "rank"
    gap_ci: Literal["basic", "percentile"] = "basic"
    n_boot: int = 1000          # bootstrap resamples (CIs)
    n_perm: int = 1000          # permutations (AP tests in compare)
    seed: int = 0
    level: float = 0.95         # CI level
    min_count: int = 16         # subgroups with fewer cases are shown but not in gaps
    split: str | None = None    # evaluate only manifest rows of this split
    by_test_set: bool = True    # one evaluation per value of the manifest's `dataset`


def resolve_label_policy(cfg: EvaluateConfig, model_dirs, thresholds_files, n: int) -> dict:
    """The policy evaluation uses, checked against the ones the models were trained with."""
    recorded = []
    for i in range(n):
        md = model_dirs[i] if model_dirs and i < len(model_dirs) else None
        tf = thresholds_files[i] if thresholds_files and i < len(thresholds_files) else None
        recorded.append(io.model_label_policy(md, tf))
    known = {p for p, _ in recorded if p is not None}
    if cfg.label_policy is not None:
        policy, source = str(LabelPolicy.parse(cfg.label_policy)), "set for this evaluation"
    elif len(known) == 1:
        policy, source = known.pop(), "recorded with the model"
        known.add(policy)
    else:
        policy = str(LabelPolicy())
        source = ("default (no model folder records a policy)" if not known else
                  "default (the models record different policies)")
    other = sorted({p for p, _ in recorded if p is not None and p != policy})
    if other and not cfg.allow_label_policy_mismatch:
        where = "; ".join(f"{f}: {p}" for p, f in recorded if p is not None)
        raise io.EvaluationInputError(
            f"label policy {policy} differs from the one the model(s) were trained with "
            f"({where}). Evaluate with the model's policy (omit --label-policy), or pass "
            "--allow-label-policy-mismatch to compare under another policy on purpose.")
    return {"policy": policy, "description": LabelPolicy.parse(policy).describe(),
            "source": source, "models": [p for p, _ in recorded],
            "mismatch_allowed": bool(other)}


def _clusters(man, cfg: EvaluateConfig) -> tuple[np.ndarray | None, dict]:
    """Patient ids to resample by, and the report's statement of the unit."""
    if cfg.bootstrap_unit == "image":
        return None, {"unit": "image", "reason": "bootstrap_unit = image"}
    if "patient_id" not in man.columns or man["patient_id"].isna().all():
        return None, {"unit": "image", "reason": "the manifest has no patient_id"}
    ids = man["patient_id"].astype("string").to_numpy(dtype=object)
    return ids, {"unit": "patient", "reason": "bootstrap_unit = patient (all images of a "
                                              "drawn patient enter together)"}


def _subgroups(man) -> tuple[np.ndarray, list[str], list[str]]:
    """(3, n) int32 codes: sex x race (0-7), sex x age (8-15), all (16); names; families."""
    sex = man["sex"].astype("string").fillna("").to_numpy(dtype=object)
    race = man["race"].astype("string").fillna("").to_numpy(dtype=object)
    age = man["age_bin"].astype("string").fillna("").to_numpy(dtype=object)
    names, fam = [], []
    codes = np.full((3, len(man)), -1, np.int32)
    for row, (values, cats, family) in enumerate(
            [(race, STUDY_RACES, "sex_race"), (age, STUDY_AGE_BINS, "sex_age")]):
        for s in ("F", "M"):
            for c in cats:
                codes[row, (sex == s) & (values == c)] = len(names)
                names.append(f"{SEX_NAMES[s]} / {c}")
                fam.append(family)
    codes[2] = len(names)
    names.append("all")
    fam.append("all")
    return codes, names, fam


def _test_sets(man, cfg: EvaluateConfig) -> list[tuple[str, np.ndarray]]:
    if cfg.by_test_set and "dataset" in man.columns:
        ds = man["dataset"].astype("string").fillna("unknown").to_numpy(dtype=object)
        values = list(dict.fromkeys(ds.tolist()))
        if len(values) > 1:
            return [(v, np.flatnonzero(ds == v)) for v in values]
        if values:
            return [(values[0], np.arange(len(man)))]
    return [("all", np.arange(len(man)))]


def _evaluate_set(y, scores: list[np.ndarray], nf_pred: list[np.ndarray | None], nf_true,
                  codes, names, families, labels, cfg, progress, clusters=None):
    """Per-model results on one test set plus the raw resampled arrays for comparisons."""
    n, G = y.shape[0], len(names)
    member = np.zeros((n, G), bool)
    for row in codes:
        ok = row >= 0
        member[np.flatnonzero(ok), row[ok]] = True
    counts = {}
    if nf_true is not None:
        neg = member & (nf_true == 0)[:, None]
        counts["ud_den"] = neg
        for m, p in enumerate(nf_pred):
            if p is not None:
                counts[f"ud_num{m}"] = neg & p[:, None]
    r = resample_auc_ap(y, scores, n_boot=cfg.n_boot, seed=cfg.seed, groups=codes,
                        n_groups=G, counts=counts, clusters=clusters, progress=progress)
    rule = cfg.undefined_label
    all_g = G - 1
    models = []
    for m in range(len(scores)):
        pa, pp = r.point_auc[m][:, all_g], r.point_ap[m][:, all_g]
        ra, rp = r.auc[m][:, :, all_g], r.ap[m][:, :, all_g]
        per_label = {}
        for j, lab in enumerate(labels):
            known = ~np.isnan(y[:, j])
            per_label[lab] = {
                "n": int(known.sum()), "positives": int((y[:, j] == 1).sum()),
                "negatives": int((y[:, j] == 0).sum()),
                "auroc": percentile_ci(float(pa[j]), ra[:, j], cfg.level).to_dict(),
                "ap": percentile_ci(float(pp[j]), rp[:, j], cfg.level).to_dict()}
        defined = np.isfinite(pa)[:, None]
        macro_res = {
            "labels_in_macro": int(defined.sum()) if rule == "skip" else len(labels),
            "labels_undefined": [lab for lab, d in zip(labels, defined[:, 0]) if not d],
            "undefined_label": rule,
            "auroc": percentile_ci(float(macro(pa[:, None], defined, rule)[0]),
                                   macro(ra[:, :, None], defined, rule)[:, 0],
                                   cfg.level).to_dict(),
            "ap": percentile_ci(float(macro(pp[:, None], defined, rule)[0]),
                                macro(rp[:, :, None], defined, rule)[:, 0],
                                cfg.level).to_dict()}
        fairness = {}
        ud_key = f"ud_num{m}"
        for family in ("sex_race", "sex_age"):
            cols = [g for g, f in enumerate(families) if f == family]
            ud_point = ud_res = None
            if ud_key in r.extra:
                ud_point = (r.extra[ud_key][0][cols], r.extra["ud_den"][0][cols])
                ud_res = (r.extra[ud_key][1][:, cols], r.extra["ud_den"][1][:, cols])
            fr = subgroup_metrics(r.point_auc[m][:, cols], r.auc[m][:, :, cols], y,
                                  member[:, cols], [names[g] for g in cols],
                                  min_count=cfg.min_count, level=cfg.level, nf_true=nf_true,
                                  ud_point=ud_point, ud_res=ud_res, undefined=rule,
                                  gap_method=cfg.gap_ci)
            d = fr.to_dict()
            for row in d["subgroups"]:  # label indices -> names
                row["positives"] = {labels[int(k)]: v for k, v in row["positives"].items()}
            fairness[family] = d
        ud_overall = None
        if ud_key in r.extra:
            num, den = r.extra[ud_key], r.extra["ud_den"]
            with np.errstate(invalid="ignore", divide="ignore"):
                rate_b = np.where(den[1][:, all_g] > 0, num[1][:, all_g] / den[1][:, all_g],
                                  np.nan)
            est = num[0][all_g] / den[0][all_g] if den[0][all_g] > 0 else float("nan")
            ud_overall = percentile_ci(float(est), rate_b, cfg.level).to_dict()
        models.append({"per_label": per_label, "macro": macro_res, "fairness": fairness,
                       "underdiagnosis_rate": ud_overall, "n": int(n)})
    return models, r


def _load(manifest, preds, model_dirs, thresholds_files, cfg):
    policy = resolve_label_policy(cfg, model_dirs, thresholds_files, len(preds))
    man = io.read_manifest(manifest, cfg.split)
    labels = list(cfg.labels)
    if not labels:
        raise io.EvaluationInputError("config `labels` is empty")
    y = io.truth_matrix(man, labels, manifest, policy["policy"])
    scores = [io.read_predictions(p, man, labels, manifest) for p in preds]
    ths = []
    for i in range(len(preds)):
        md = model_dirs[i] if model_dirs and i < len(model_dirs) else None
        tf = thresholds_files[i] if thresholds_files and i < len(thresholds_files) else None
        ths.append(io.read_thresholds(md, tf))
    nf_true = None
    nf_pred: list[np.ndarray | None] = [None] * len(preds)
    if any(t is not None for t in ths):
        nf_true = io.truth_matrix(man, [NO_FINDING], manifest, policy["policy"])[:, 0]
        for i, (p, t) in enumerate(zip(preds, ths)):
            if t is None:
                continue
            if NO_FINDING not in t["thresholds"]:
                raise io.EvaluationInputError(f"{t['source']}: no threshold for {NO_FINDING!r} "
                                              "(needed for the underdiagnosis rate)")
            nf_scores = io.read_predictions(p, man, [NO_FINDING], manifest)[:, 0]
            nf_pred[i] = io.binarize(nf_scores, t["thresholds"][NO_FINDING], t["rule"])
    return man, labels, y, scores, ths, nf_true, nf_pred, policy


def _model_name(pred, model_dir, used: set) -> str:
    base = Path(model_dir).name if model_dir else Path(pred).stem
    name, k = base, 2
    while name in used:
        name, k = f"{base}-{k}", k + 1
    used.add(name)
    return name


def _run(manifest, preds, model_dirs, thresholds_files, names, cfg, progress):
    man, labels, y, scores, ths, nf_true, nf_pred, policy = _load(
        manifest, preds, model_dirs, thresholds_files, cfg)
    clusters, unit = _clusters(man, cfg)
    used: set = set()
    if names:
        if len(names) != len(preds):
            raise io.EvaluationInputError(f"{len(names)} names for {len(preds)} predictions")
        names = list(names)
    else:
        names = [_model_name(p, model_dirs[i] if model_dirs and i < len(model_dirs) else None,
                             used) for i, p in enumerate(preds)]
    codes, gnames, families = _subgroups(man)
    sets = []
    for set_name, rows in _test_sets(man, cfg):
        log.info("evaluating test set %s (%d cases)", set_name, rows.size)
        models, raw = _evaluate_set(
            y[rows], [s[rows] for s in scores], [p[rows] if p is not None else None for p in nf_pred],
            nf_true[rows] if nf_true is not None else None, codes[:, rows], gnames, families,
            labels, cfg, progress, clusters=clusters[rows] if clusters is not None else None)
        sets.append((set_name, rows, models, raw))
    result = {
        "config": cfg.to_dict(), "labels": labels, "models": names,
        "inputs": {"manifest": os.fspath(manifest), "predictions": [os.fspath(p) for p in preds],
                   "thresholds": [t["source"] if t else None for t in ths]},
        "label_policy": policy,
        "bootstrap": {**unit, "draws": STREAM},
        "macro_rule": {"undefined_label": cfg.undefined_label,
                       "description": UNDEFINED_RULES[cfg.undefined_label]},
        "thresholds": [({"rule": t["rule"], NO_FINDING: t["thresholds"].get(NO_FINDING)}
                        if t else None) for t in ths],
        "test_sets": {name: {"n": int(rows.size),
                             "units": (cluster_codes(clusters[rows])[1] if clusters is not None
                                       else int(rows.size)),
                             "models": dict(zip(names, models))}
                      for name, rows, models, _ in sets},
    }
    return result, (man, labels, y, scores, sets, names, clusters)


def evaluate_predictions(pred, manifest, *, model_dir=None, thresholds=None, out=None,
                         config: EvaluateConfig | None = None, sweep=None, name=None,
                         progress: bool = True) -> dict:
    """Evaluate one predictions file against a manifest; write the report to `out` if given.

    Returns the report dictionary (also `out/report.json`). Thresholds (for the
    underdiagnosis rate) come from `thresholds` or `model_dir/thresholds.json`.
    """
    cfg = config or EvaluateConfig()
    result, _ = _run(manifest, [pred], [model_dir] if model_dir else None,
                     [thresholds] if thresholds else None, [name] if name else None, cfg,
                     progress)
    result["kind"] = "evaluate"
    if out is not None:
        write_report(result, out, cfg, inputs=[pred, manifest], sweep=sweep)
    return result


def _diff_ci(a, b, level):
    return percentile_ci(float(a[0] - b[0]), a[1] - b[1], level).to_dict()


def _boot_test(point_diff: float, diffs: np.ndarray) -> dict:
    d = diffs[np.isfinite(diffs)]
    if not math.isfinite(point_diff) or d.size < 2:
        return {"z": float("nan"), "p": float("nan"), "se": float("nan")}
    se = float(d.std(ddof=1))
    if se == 0:
        z = 0.0 if point_diff == 0 else math.copysign(math.inf, point_diff)
    else:
        z = point_diff / se
    return {"z": float(z), "p": math.erfc(abs(z) / math.sqrt(2.0)), "se": se}


def compare_predictions(preds: Sequence, manifest, *, model_dirs=None, thresholds=None,
                        names=None, out=None, config: EvaluateConfig | None = None, sweep=None,
                        progress: bool = True) -> dict:
    """Paired comparison of predictions files on the same manifest (first = baseline).

    Returns the report dictionary (also `out/report.json`): each model's
    evaluation plus, per test set, one comparison per model against the baseline.
    """

    cfg = config or EvaluateConfig()
    if len(preds) < 2:
        raise io.EvaluationInputError("compare needs at least two --pred files")
    result, (_man, labels, y, scores, sets, names, clusters) = _run(
        manifest, list(preds), model_dirs, thresholds, names, cfg, progress)
    result["kind"] = "compare"
    result["baseline"] = names[0]
    patient = clusters is not None
    swap = ("within-model percentile ranks" if cfg.permutation_swap == "rank"
            else "raw scores")
    result["methods"] = {
        "per_label_auroc": "DeLong test (Sun and Xu 2014), two-sided",
        "macro_auroc": (MACRO_METHOD.format(clustered=", influences summed per patient"
                                            if patient else "")
                        if cfg.macro_auroc_test == "delong" else
                        "paired bootstrap: z = difference / SD of resampled differences, "
                        "two-sided normal p") + "; percentile bootstrap CI",
        "auprc": f"paired permutation test swapping {swap} case by case, R = {cfg.n_perm}, "
                 "p = (1 + #|d*| >= |d|) / (R + 1)",
        "differences": f"model - baseline; CIs are percentile bootstrap on shared "
                       f"{result['bootstrap']['unit']} resamples"}
    all_g = -1
    for set_name, rows, models, raw in sets:
        ys = y[rows]
        comps = {}
        for k in range(1, len(scores)):
            a, b = scores[k][rows], scores[0][rows]
            per = {}
            for j, lab in enumerate(labels):
                yj = ys[:, j]
                try:
                    dl = delong_test(yj, a[:, j], b[:, j]).to_dict()
                except ValueError as exc:
                    dl = {"error": str(exc), "z": float("nan"), "p": float("nan")}
                per[lab] = {
                    "delong": dl,
                    "auroc_diff": _diff_ci((raw.point_auc[k][j, all_g], raw.auc[k][:, j, all_g]),
                                           (raw.point_auc[0][j, all_g], raw.auc[0][:, j, all_g]),
                                           cfg.level),
                    "ap_diff": _diff_ci((raw.point_ap[k][j, all_g], raw.ap[k][:, j, all_g]),
                                        (raw.point_ap[0][j, all_g], raw.ap[0][:, j, all_g]),
                                        cfg.level)}
            obs, pd_ = permutation_diffs(ys, a, b, metric="ap", n_perm=cfg.n_perm,
                                         seed=cfg.seed + 1, swap=cfg.permutation_swap,
                                         progress=progress)
            for j, lab in enumerate(labels):
                per[lab]["ap_permutation_p"] = permutation_p(obs[0, j] - obs[1, j], pd_[:, j])
            both = np.isfinite(raw.point_auc[k][:, all_g]) & np.isfinite(raw.point_auc[0][:, all_g])
            defined = both[:, None]
            rule = cfg.undefined_label
            mac = {}
            for metric, pt, rs in (("auroc", raw.point_auc, raw.auc), ("ap", raw.point_ap, raw.ap)):
                pk = float(macro(pt[k][:, all_g][:, None], defined, rule)[0])
                p0 = float(macro(pt[0][:, all_g][:, None], defined, rule)[0])
                rk = macro(rs[k][:, :, all_g][:, :, None], defined, rule)[:, 0]
                r0 = macro(rs[0][:, :, all_g][:, :, None], defined, rule)[:, 0]
                mac[metric] = {"model": pk, "baseline": p0,
                               "diff": percentile_ci(pk - p0, rk - r0, cfg.level).to_dict(),
                               "bootstrap_test": _boot_test(pk - p0, rk - r0)}
            cl = clusters[rows] if clusters is not None else None
            try:
                cols = np.flatnonzero(both) if rule == "skip" else np.arange(len(labels))
                dm = delong_macro_test(ys[:, cols], a[:, cols], b[:, cols], clusters=cl,
                                       undefined=rule).to_dict()
                dm["labels"] = [labels[cols[j]] for j in dm["labels"]]
            except ValueError as exc:
                dm = {"error": str(exc), "z": float("nan"), "p": float("nan")}
            mac["auroc"]["delong"] = dm
            mac["auroc"]["test"] = dict(
                (dm if cfg.macro_auroc_test == "delong" else mac["auroc"]["bootstrap_test"]),
                method=cfg.macro_auroc_test)
            okp = np.isfinite(obs).all(axis=0) & both
            if okp.any():
                # "zero": undefined labels add 0 to both models, so the mean over all
                # labels is the defined ones' sum / L
                denom = okp.sum() if rule == "skip" else len(labels)
                d_obs = float((obs[0, okp] - obs[1, okp]).sum() / denom)
                mac["ap"]["permutation_p"] = permutation_p(d_obs, pd_[:, okp].sum(axis=1) / denom)
            else:
                mac["ap"]["permutation_p"] = float("nan")
            mac["labels_in_macro"] = int(both.sum()) if rule == "skip" else len(labels)
            mac["labels_undefined"] = [lab for lab, d in zip(labels, both) if not d]
            mac["undefined_label"] = rule
            gaps = {}
            for family in ("sex_race", "sex_age"):
                fk = models[k]["fairness"][family]
                f0 = models[0]["fairness"][family]
                gaps[family] = {
                    "fairness_gap": {"model": fk["fairness_gap"]["estimate"],
                                     "baseline": f0["fairness_gap"]["estimate"]},
                    "underdiagnosis_gap": {
                        "model": (fk["underdiagnosis_gap"] or {}).get("estimate"),
                        "baseline": (f0["underdiagnosis_gap"] or {}).get("estimate")}}
            comps[names[k]] = {"per_label": per, "macro": mac, "gaps": gaps}
        result["test_sets"][set_name]["comparisons"] = comps
    if out is not None:
        write_report(result, out, cfg, inputs=[*preds, manifest], sweep=sweep)
    return result
