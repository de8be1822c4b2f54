"""Native ranking kernels against their numpy twins and scikit-learn."""
import numpy as np
import pytest
from rv2 import _native
from rv2.evaluate import kernels as K
from rv2.evaluate.bootstrap import resample_indices, weights_from_indices
from sklearn.metrics import average_precision_score, roc_auc_score

needs_native = pytest.mark.skipif(not _native.HAS_NATIVE,
                                  reason=f"rv2._C not built ({_native.NATIVE_ERROR})")
TOL = 1e-12


def _data(n, seed, decimals=2, unknown=0.1):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(float)
    y[rng.random(n) < unknown] = np.nan
    y[rng.random(n) < unknown / 2] = -1.0
    s = np.round(rng.random(n) + 0.4 * np.nan_to_num(y).clip(0), decimals)
    return y, s


def _known(y):
    return (y == 0) | (y == 1)


@pytest.mark.parametrize("native", [True, False])
def test_point_estimates_equal_sklearn(native):
    if native and not _native.HAS_NATIVE:
        pytest.skip("rv2._C not built")
    for seed, dec in [(0, 2), (1, 6), (2, 1)]:
        y, s = _data(3000, seed, dec)
        k = _known(y)
        auc, ap = K.boot_auc_ap(s, y, np.ones((1, y.size), np.int32), native=native)
        assert abs(auc[0, 0] - roc_auc_score(y[k], s[k])) < TOL
        assert abs(ap[0, 0] - average_precision_score(y[k], s[k])) < TOL


@needs_native
def test_bootstrap_values_equal_sklearn_on_same_indices():
    y, s = _data(800, 3)
    idx = next(resample_indices(y.size, 40, seed=5))
    w = weights_from_indices(idx, y.size)
    auc, ap = K.boot_auc_ap(s, y, w, native=True)
    for b, rows in enumerate(idx):
        yy, ss = y[rows], s[rows]
        k = _known(yy)
        assert abs(auc[b, 0] - roc_auc_score(yy[k], ss[k])) < TOL
        assert abs(ap[b, 0] - average_precision_score(yy[k], ss[k])) < TOL


@needs_native
def test_native_equals_twin_with_groups_and_ties():
    y, s = _data(1500, 4, decimals=1)
    rng = np.random.default_rng(9)
    w = weights_from_indices(rng.integers(0, y.size, (30, y.size)), y.size)
    # two families of groups with disjoint codes, plus a code repeated in both rows
    groups = np.stack([rng.integers(-1, 3, y.size), 3 + rng.integers(0, 2, y.size)])
    groups[1, :5] = groups[0, :5]
    a1, p1 = K.boot_auc_ap(s, y, w, groups, 6, native=True)
    a2, p2 = K.boot_auc_ap(s, y, w, groups, 6, native=False)
    np.testing.assert_array_equal(np.isnan(a1), np.isnan(a2))
    assert np.nanmax(np.abs(a1 - a2)) <= TOL and np.nanmax(np.abs(p1 - p2)) <= TOL
    # group 5 never coded: NaN, never 0
    assert np.isnan(a1[:, 5]).all() and np.isnan(p1[:, 5]).all()
    # a group's value equals the kernel run on that group's cases alone
    m = (groups == 1).any(axis=0)
    a3, _ = K.boot_auc_ap(s[m], y[m], w[:, m], native=True)
    assert np.nanmax(np.abs(a3[:, 0] - a1[:, 1])) <= TOL


@needs_native
@pytest.mark.parametrize("case", ["one_class", "all_tied", "empty", "one_element", "zero_weights"])
def test_edge_cases_native_equals_twin(case):
    n = 50
    y = (np.arange(n) % 3 == 0).astype(float)
    s = np.linspace(0, 1, n)
    w = np.ones((2, n), np.int32)
    if case == "one_class":
        y[:] = 1.0
    elif case == "all_tied":
        s[:] = 0.5
    elif case == "empty":
        y, s, w = np.zeros(0), np.zeros(0), np.ones((2, 0), np.int32)
    elif case == "one_element":
        y, s, w = y[:1], s[:1], w[:, :1]
    elif case == "zero_weights":
        w[1] = 0
    out_n = K.boot_auc_ap(s, y, w, native=True)
    out_p = K.boot_auc_ap(s, y, w, native=False)
    for a, b in zip(out_n, out_p):
        np.testing.assert_allclose(a, b, atol=TOL, equal_nan=True)
    auc, ap = out_n
    if case == "all_tied":
        assert auc[0, 0] == 0.5 and abs(ap[0, 0] - y.mean()) < TOL
        assert ap[0, 0] == pytest.approx(average_precision_score(y, s))
    elif case == "zero_weights":
        assert np.isnan(auc[1, 0]) and np.isfinite(auc[0, 0])
    else:
        assert np.isnan(auc).all() and np.isnan(ap).all()


@needs_native
def test_nonfinite_scores_raise_in_both():
    y, s = _data(100, 6)
    s[np.flatnonzero(_known(y))[3]] = np.inf
    for native in (True, False):
        with pytest.raises(ValueError, match="not finite"):
            K.boot_auc_ap(s, y, np.ones((1, y.size), np.int32), native=native)
    # unknown-label cases may carry anything: they are left out
    s2 = s.copy()
    s2[~np.isfinite(s2)] = 0.0
    s2[np.flatnonzero(~_known(y))[0]] = np.nan
    K.boot_auc_ap(s2, y, np.ones((1, y.size), np.int32), native=True)


@needs_native
def test_permutation_kernel_native_equals_twin_and_sklearn():
    y, a = _data(1200, 7, decimals=2)
    b = np.round(np.random.default_rng(8).random(y.size) + 0.2 * np.nan_to_num(y).clip(0), 2)
    sw = (np.random.default_rng(10).random((25, y.size)) < 0.5).astype(np.uint8)
    sw[0] = 0
    sw[1] = 1
    n1 = K.perm_auc_ap(a, b, y, sw, native=True)
    n2 = K.perm_auc_ap(a, b, y, sw, native=False)
    for x1, x2 in zip(n1, n2):
        assert np.abs(x1 - x2).max() <= TOL
    k = _known(y)
    for r in (0, 1, 7):
        a_r = np.where(sw[r] == 1, b, a)
        b_r = np.where(sw[r] == 1, a, b)
        assert abs(n1[0][r, 0] - roc_auc_score(y[k], a_r[k])) < TOL
        assert abs(n1[1][r, 1] - average_precision_score(y[k], b_r[k])) < TOL


@needs_native
def test_delong_placements_native_equals_twin():
    y, a = _data(900, 11, decimals=1)
    b = np.round(np.random.default_rng(12).random(y.size), 1)
    v1 = K.delong_placements(np.stack([a, b]), y, native=True)
    v2 = K.delong_placements(np.stack([a, b]), y, native=False)
    for x1, x2 in zip(v1, v2):
        assert np.abs(x1 - x2).max() <= TOL
    k = _known(y)
    assert abs(v1[0][0].mean() - roc_auc_score(y[k], a[k])) < 1e-12


@needs_native
def test_threads_do_not_change_results():
    m = _native.native_module()
    y, s = _data(2000, 13)
    w = weights_from_indices(np.random.default_rng(1).integers(0, y.size, (16, y.size)), y.size)
    try:
        m.set_num_threads(1)
        one = K.boot_auc_ap(s, y, w, native=True)
        m.set_num_threads(3)
        three = K.boot_auc_ap(s, y, w, native=True)
    finally:
        m.set_num_threads(0)
    np.testing.assert_array_equal(one[0], three[0])
    np.testing.assert_array_equal(one[1], three[1])


@needs_native
def test_caller_order_gives_same_result_and_is_checked():
    y, s = _data(1000, 14, decimals=2)
    w = weights_from_indices(np.random.default_rng(2).integers(0, y.size, (20, y.size)), y.size)
    order = K.rank_order(s, y)
    assert (order[0, : int(_known(y).sum())] >= 0).all() and (order[0, int(_known(y).sum()):] == -1).all()
    a1, p1 = K.boot_auc_ap(s[None], y, w, order=order, native=True)
    a2, p2 = K.boot_auc_ap(s[None], y, w, native=True)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(p1, p2)
    m = int(_known(y).sum())
    bad = order.copy()
    bad[0, :m] = order[0, :m][::-1]  # ascending: not the contract
    short = order.copy()
    short[0, m - 1] = -1  # one known case missing
    for b in (bad, short):
        with pytest.raises(ValueError, match="order"):
            K.boot_auc_ap(s[None], y, w, order=b, native=True)


@needs_native
def test_bootstrap_counts_native_equals_numpy():
    idx = np.random.default_rng(3).integers(0, 500, (7, 500))
    np.testing.assert_array_equal(weights_from_indices(idx, 500, native=True),
                                  weights_from_indices(idx, 500, native=False))
    with pytest.raises(ValueError, match=r"\[0, n\)"):
        weights_from_indices(np.full((1, 5), 5), 5, native=True)


@needs_native
@pytest.mark.parametrize("decimals", [1, 3, 8])
def test_one_group_fast_path_equals_the_general_walk_bit_for_bit(decimals):
    """One group of every case takes the vectorised walk (float tie sums, weights as bytes
    below 256, else as floats); the same groups written twice take the general one. Their
    results agree exactly, by case and by patient, and with weights too large for exact
    float sums (the fallback)."""
    C = _native.native_module()
    y, s = _data(5000, decimals, decimals)
    S = np.ascontiguousarray(np.stack([s, s[::-1]]))
    Y = np.ascontiguousarray(np.stack([y, y]))
    w = weights_from_indices(next(resample_indices(y.size, 37, seed=decimals)), y.size)
    one, twice = np.zeros((1, y.size), np.int32), np.zeros((2, y.size), np.int32)
    fast = C.boot_auc_ap(S, Y, w, one, 1, None, None)
    slow = C.boot_auc_ap(S, Y, w, twice, 1, None, None)
    for a, b in zip(fast, slow):
        np.testing.assert_array_equal(a, b)
    assert np.isfinite(fast[0]).all()
    patients = (np.arange(y.size) // 3).astype(np.int32)
    wp = weights_from_indices(next(resample_indices(patients.max() + 1, 21, seed=1)), patients.max() + 1)
    for a, b in zip(C.boot_auc_ap(S, Y, wp, one, 1, None, patients),
                    C.boot_auc_ap(S, Y, wp, twice, 1, None, patients)):
        np.testing.assert_array_equal(a, b)
    # counts of 256 and more: float weights, not bytes; then max weight x n >= 2^24: float
    # tie sums could round, so the general walk
    for big in (w * 100, w * 5000):
        assert big.max() >= 256
        for a, b in zip(C.boot_auc_ap(S, Y, big, one, 1, None, None),
                        C.boot_auc_ap(S, Y, big, twice, 1, None, None)):
            np.testing.assert_array_equal(a, b)
