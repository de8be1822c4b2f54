"""The array API: bootstrap CIs, permutation test, fairness metrics and edge cases."""
import numpy as np
import pytest
import rv2.evaluate as E
from rv2.evaluate.bootstrap import (
    bootstrap_weights,
    macro,
    resample_auc_ap,
    resample_indices,
)
from sklearn.metrics import average_precision_score, roc_auc_score


def _data(n=400, L=3, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, L)) < 0.3).astype(float)
    s = np.round(rng.random((n, L)) + 0.5 * y, 2)
    return y, s


def test_point_metrics_match_sklearn_and_nan_when_undefined():
    y, s = _data()
    assert E.auroc(y[:, 0], s[:, 0]) == pytest.approx(roc_auc_score(y[:, 0], s[:, 0]), abs=1e-12)
    assert E.average_precision(y[:, 0], s[:, 0]) == pytest.approx(
        average_precision_score(y[:, 0], s[:, 0]), abs=1e-12)
    assert np.isnan(E.auroc(np.ones(10), np.arange(10.0)))
    assert np.isnan(E.average_precision(np.zeros(10), np.arange(10.0)))
    assert E.auroc([1, 0, 1, 0], [0.5] * 4) == 0.5  # all tied


def test_weights_reproduce_index_resampling_and_stay_chunked():
    n = 300
    idx = np.concatenate(list(resample_indices(n, 25, seed=3, chunk=7)))
    w = np.concatenate(list(bootstrap_weights(n, 25, seed=3, chunk=7)))
    assert idx.shape == (25, n) and w.shape == (25, n) and w.dtype == np.int32
    for b in range(25):
        np.testing.assert_array_equal(w[b], np.bincount(idx[b], minlength=n))
    # same seed, same draws, whatever the chunking
    w2 = np.concatenate(list(bootstrap_weights(n, 25, seed=3, chunk=25)))
    np.testing.assert_array_equal(w, w2)


def test_bootstrap_ci_matches_sklearn_loop_on_same_indices():
    y, s = _data(n=250)
    ci = E.bootstrap_ci(y[:, 0], s[:, 0], "ap", n_boot=60, seed=4)
    idx = np.concatenate(list(resample_indices(250, 60, seed=4)))
    ref = np.array([average_precision_score(y[r, 0], s[r, 0]) for r in idx])
    lo, hi = np.percentile(ref, [2.5, 97.5])
    assert (ci.low, ci.high) == pytest.approx((lo, hi), abs=1e-12)
    assert ci.estimate == pytest.approx(average_precision_score(y[:, 0], s[:, 0]), abs=1e-12)
    assert ci.valid_share == 1.0


def test_undefined_resamples_are_nan_and_counted():
    # 2 positives in 40 cases: many resamples lose both positives
    y = np.zeros(40)
    y[:2] = 1
    s = np.linspace(1, 0, 40)
    ci = E.bootstrap_ci(y, s, n_boot=300, seed=0)
    assert 0.5 < ci.valid_share < 1.0
    assert np.isfinite(ci.low) and ci.high <= 1.0
    ci1 = E.bootstrap_ci(np.ones(20), s[:20], n_boot=20)
    assert np.isnan(ci1.estimate) and ci1.valid_share == 0.0


def test_macro_excludes_undefined_labels_never_zero():
    y, s = _data(L=3)
    y[:, 2] = 0.0  # one class only
    r = resample_auc_ap(y, [s], n_boot=30, seed=1)
    assert np.isnan(r.point_auc[0, 2, 0])
    defined = np.isfinite(r.point_auc[0])
    m = macro(r.point_auc[0], defined)[0]
    assert m == pytest.approx(np.mean([roc_auc_score(y[:, j], s[:, j]) for j in (0, 1)]))
    ci = E.bootstrap_macro_ci(y, s, n_boot=30)
    assert ci.estimate == pytest.approx(m)


def test_permutation_test_single_and_macro():
    y, s = _data(n=300, L=3, seed=5)
    rng = np.random.default_rng(6)
    weak = np.round(rng.random(s.shape) + 0.1 * y, 2)
    r = E.permutation_test(y[:, 0], s[:, 0], weak[:, 0], "ap", n_perm=99, seed=1)
    assert r.diff == pytest.approx(average_precision_score(y[:, 0], s[:, 0])
                                   - average_precision_score(y[:, 0], weak[:, 0]))
    assert r.p == pytest.approx(1 / 100)  # a strong difference: no permutation reaches it
    same = E.permutation_test(y[:, 0], s[:, 0], s[:, 0], n_perm=50)
    assert same.diff == 0 and same.p == 1.0
    m = E.permutation_test(y, s, weak, "ap", n_perm=49, seed=2)
    assert len(m.per_label) == 3 and m.p == pytest.approx(1 / 50)
    assert m.diff == pytest.approx(np.mean([d["diff"] for d in m.per_label]))


def test_permutation_p_is_uniformish_under_null():
    rng = np.random.default_rng(0)
    ps = []
    for k in range(20):
        y = (rng.random(120) < 0.4).astype(float)
        base = rng.random(120) + 0.5 * y
        a = base + rng.normal(scale=0.3, size=120)
        b = base + rng.normal(scale=0.3, size=120)
        ps.append(E.permutation_test(y, a, b, n_perm=99, seed=k).p)
    assert 0.2 < np.mean(ps) < 0.8


def test_fairness_report_gaps_and_min_count():
    rng = np.random.default_rng(2)
    n = 900
    groups = rng.choice(["a", "b", "c", "tiny"], n, p=[0.33, 0.33, 0.325, 0.015])
    y = (rng.random((n, 2)) < 0.35).astype(float)
    signal = np.where(groups == "a", 1.5, np.where(groups == "b", 0.8, 0.3))[:, None]
    s = rng.random((n, 2)) + signal * y
    nf_true = (rng.random(n) < 0.4).astype(float)
    nf_pred = rng.random(n) < np.where(groups == "c", 0.5, 0.2)
    fr = E.fairness_report(y, s, groups, no_finding_true=nf_true, no_finding_pred=nf_pred,
                           n_boot=80, min_count=16)
    rows = {r["group"]: r for r in fr.subgroups}
    assert rows["tiny"]["n"] < 16 and not rows["tiny"]["in_fairness_gap"]
    sub = E.subgroup_auroc(y, s, groups)
    expect = max(sub[g] for g in "abc") - min(sub[g] for g in "abc")
    assert fr.fairness_gap.estimate == pytest.approx(expect)
    assert fr.fairness_gap.low <= expect <= fr.fairness_gap.high
    ud = E.underdiagnosis_rate(nf_true, nf_pred, groups)
    for g in "abc":
        m = (groups == g) & (nf_true == 0)
        assert ud[g] == pytest.approx(nf_pred[m].mean())
        assert rows[g]["underdiagnosis"]["estimate"] == pytest.approx(ud[g])
    assert fr.underdiagnosis_gap.estimate == pytest.approx(
        E.underdiagnosis_gap({g: ud[g] for g in "abc"}))
    assert E.fairness_gap({"a": 0.7, "b": float("nan"), "c": 0.9}) == pytest.approx(0.2)


def test_underdiagnosis_undefined_is_nan_not_one():
    t = np.array([1, 1, 0, 0, 1.0])
    p = np.array([1, 0, 1, 0, 1], bool)
    g = np.array(["x", "x", "y", "y", "z"])
    r = E.underdiagnosis_rate(t, p, g)
    assert np.isnan(r["x"]) and np.isnan(r["z"]) and r["y"] == 0.5
    assert np.isnan(E.underdiagnosis_gap(r))  # one defined subgroup: no gap


def test_subgroup_with_one_class_is_nan_and_excluded():
    y = np.array([1, 0, 1, 0, 1, 1, 1, 1.0])
    s = np.array([0.9, 0.1, 0.8, 0.3, 0.7, 0.6, 0.5, 0.4])
    g = np.array(["a"] * 4 + ["b"] * 4)
    sub = E.subgroup_auroc(y, s, g)
    assert sub["a"] == 1.0 and np.isnan(sub["b"])
    fr = E.fairness_report(y, s, g, n_boot=10, min_count=1)
    assert np.isnan(fr.fairness_gap.estimate)  # only one subgroup defined
    assert [r["labels_defined"] for r in fr.subgroups] == [1, 0]


def test_bad_input_errors():
    with pytest.raises(ValueError, match="NaN or infinite"):
        E.bootstrap_ci([1, 0, 1], [0.2, np.inf, 0.4])
    with pytest.raises(ValueError, match="must be 'auroc' or 'ap'"):
        E.bootstrap_ci([1, 0], [0.1, 0.2], "f1")
    with pytest.raises(ValueError, match="labels must be 1"):
        E.permutation_test([0, 3], [0.1, 0.2], [0.2, 0.1])
