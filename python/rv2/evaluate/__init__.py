"""Evaluation statistics: AUROC / AP with bootstrap CIs, DeLong and permutation
tests, subgroup fairness gaps and underdiagnosis, and the `rv2 evaluate` /
`rv2 compare` reports. Definitions: ../shared/reference/statistics.md.

Array API (numpy in, results out; labels 1/0 with -1/NaN unknown = left out):

    from rv2.evaluate import delong_test, bootstrap_ci, permutation_test
    r = delong_test(y, scores_a, scores_b)        # r.auc_a, r.auc_b, r.z, r.p
    ci = bootstrap_ci(y, scores, "auroc")         # ci.estimate, ci.low, ci.high
    pt = permutation_test(y, scores_a, scores_b, "ap")   # pt.diff, pt.p
    fr = fairness_report(Y, S, groups, no_finding_true=nf, no_finding_pred=nf_hat)

Files API: evaluate_predictions(...), compare_predictions(...) (rv2.evaluate.evaluation).
"""
from __future__ import annotations

from rv2.evaluate.bootstrap import (
    CI,
    bootstrap_ci,
    bootstrap_macro_ci,
    bootstrap_weights,
    percentile_ci,
    resample_auc_ap,
    resample_indices,
)
from rv2.evaluate.delong import DeLongResult, delong_test
from rv2.evaluate.fairness import (
    FairnessResult,
    fairness_gap,
    fairness_report,
    underdiagnosis_gap,
    underdiagnosis_rate,
)
from rv2.evaluate.metrics import auroc, average_precision, subgroup_auroc
from rv2.evaluate.permutation import PermutationResult, permutation_test

__all__ = [
    "CI", "DeLongResult", "FairnessResult", "PermutationResult", "auroc", "average_precision",
    "bootstrap_ci", "bootstrap_macro_ci", "bootstrap_weights", "compare_predictions",
    "delong_test", "evaluate_predictions", "fairness_gap", "fairness_report",
    "percentile_ci", "permutation_test", "resample_auc_ap", "resample_indices",
    "subgroup_auroc", "underdiagnosis_gap", "underdiagnosis_rate",
]


def __getattr__(name):  # the file-level API pulls in pandas; load it on first use
    if name in ("evaluate_predictions", "compare_predictions"):
        from rv2.evaluate import evaluation

        return getattr(evaluation, name)
    raise AttributeError(f"module 'rv2.evaluate' has no attribute {name!r}")
