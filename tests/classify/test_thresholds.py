import numpy as np
import pytest
from rv2.classify.thresholds import best_f1_threshold, best_f1_thresholds, binarize
from sklearn.metrics import f1_score


def brute_force(y, p):
    """Every distinct score as threshold, sklearn F1 of p >= t, largest t among the maxima."""
    keep = ~np.isnan(y)
    y, p = y[keep], p[keep]
    best_t, best_f1 = None, -1.0
    for t in sorted(set(p.tolist())):  # ascending: a later equal F1 replaces (largest kept)
        f1 = f1_score(y.astype(int), (p >= t).astype(int), zero_division=0)
        if f1 >= best_f1 - 1e-12:
            best_t, best_f1 = t, f1
    return best_t, best_f1


@pytest.mark.parametrize("seed", range(12))
def test_matches_brute_force_with_ties_and_masks(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 80))
    y = (rng.random(n) < rng.uniform(0.1, 0.6)).astype(float)
    y[0] = 1.0
    p = np.round(rng.random(n) * 0.6 + 0.4 * y, decimals=int(rng.integers(1, 3)))  # many ties
    y[rng.random(n) < 0.1] = np.nan
    if not np.nansum(y):
        y[0] = 1.0
    t, f1, defined = best_f1_threshold(y, p)
    bt, bf1 = brute_force(y, p)
    assert defined
    assert t == bt
    assert f1 == pytest.approx(bf1, abs=1e-12)


def test_tie_rule_keeps_the_largest_threshold():
    # t=0.9 -> TP1 FP0 FN1: F1 = 2/3; t=0.2 -> TP2 FP2 FN0: F1 = 4/6 = 2/3 as well
    y = np.array([1, 0, 0, 1], float)
    p = np.array([0.9, 0.5, 0.3, 0.2])
    t, f1, _ = best_f1_threshold(y, p)
    assert t == 0.9 and f1 == pytest.approx(2 / 3)
    assert binarize(p[:, None], {"a": t}, ["a"])[:, 0].tolist() == [True, False, False, False]


def test_threshold_equal_to_a_score_counts_that_case_positive():
    y = np.array([1, 1, 0], float)
    p = np.array([0.7, 0.4, 0.1])
    t, f1, _ = best_f1_threshold(y, p)
    assert t == 0.4 and f1 == 1.0  # `>=`: the case scored exactly 0.4 is positive


def test_matrix_with_label_without_positives_falls_back():
    y = np.array([[1, 0], [0, 0], [1, np.nan]], float)
    p = np.array([[0.8, 0.3], [0.2, 0.6], [0.7, 0.9]])
    out = best_f1_thresholds(y, p, ["A", "B"])
    assert out["labels"] == ["A", "B"] and out["rule"] == ">="
    assert out["thresholds"]["A"] == 0.7 and out["f1"]["A"] == 1.0
    assert out["fallback"] == ["B"] and out["thresholds"]["B"] == 0.5 and out["f1"]["B"] is None
    assert out["n"] == {"A": 3, "B": 2} and out["n_pos"] == {"A": 2, "B": 0}
    assert "largest" in out["tie_rule"]


def test_shape_errors():
    with pytest.raises(ValueError, match="shape"):
        best_f1_thresholds(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        best_f1_threshold(np.array([1.0, 0.0]), np.array([np.nan, 0.2]))
