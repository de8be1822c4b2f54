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
    # with subgroups (a case in several, one coded twice): byte counts take the grouped
    # byte walk; one count of 300 in an extra resample sends every row to the float walk
    codes = np.stack([np.arange(y.size) % 3, np.where(np.arange(y.size) % 5 == 0, -1, 3),
                      np.arange(y.size) % 3]).astype(np.int32)
    wbig = np.vstack([w, np.where(np.arange(y.size) == 7, 300, 1)]).astype(np.int32)
    fast = C.boot_auc_ap(S, Y, w, codes, 4, None, None)
    slow = C.boot_auc_ap(S, Y, wbig, codes, 4, None, None)
    for a, b in zip(fast, slow):
        np.testing.assert_array_equal(a, b[:, :w.shape[0]])
    assert np.isfinite(fast[0]).all()
    # counts of 256 and more: float weights, not bytes; then max weight x n >= 2^24: float
    # tie sums could round, so the general walk
    for big in (w * 100, w * 5000):
        assert big.max() >= 256
        for a, b in zip(C.boot_auc_ap(S, Y, big, one, 1, None, None),
                        C.boot_auc_ap(S, Y, big, twice, 1, None, None)):
            np.testing.assert_array_equal(a, b)


@needs_native
@pytest.mark.parametrize("seed", [0, 7, 2**64 - 1])
def test_seeded_streams_native_equal_the_numpy_twin(seed):
    """The counter-based stream gives the same draws in C++ and numpy, at any offset."""
    from rv2.evaluate import streams

    C = _native.native_module()
    for first, count, units in [(0, 5, 1), (3, 17, 7), (100, 20, 60_000), (0, 2, 2**20 + 3)]:
        np.testing.assert_array_equal(C.boot_counts(seed, first, count, units),
                                      streams.boot_counts(seed, first, count, units))
    for first, count, n in [(0, 1, 1), (16, 20, 7), (32, 40, 1001)]:
        np.testing.assert_array_equal(C.perm_swaps(seed, first, count, n),
                                      streams.perm_swaps(seed, first, count, n))
    # one resample's draws do not depend on the rows drawn with it
    a = streams.boot_draws(seed, 0, 9, 300)
    np.testing.assert_array_equal(a[4:], streams.boot_draws(seed, 4, 5, 300))


def test_seeded_streams_look_uniform():
    """Counts per unit and swap rates sit where a fair stream puts them."""
    from rv2.evaluate import streams
    from scipy.stats import chisquare

    d = streams.boot_draws(11, 0, 200, 1000)
    assert chisquare(np.bincount(d.ravel(), minlength=1000)).pvalue > 1e-3
    sw = streams.perm_swaps(11, 0, 64, 5000)
    assert abs(sw.mean() - 0.5) < 0.005
    # lanes of one word block are independent bits, not copies
    assert abs(np.corrcoef(sw[0], sw[1])[0, 1]) < 0.05


def test_seed_must_be_a_non_negative_integer():
    from rv2.errors import UserError
    from rv2.evaluate.bootstrap import bootstrap_weights

    for bad in (-1, 2**64, 1.5, "3", True):
        with pytest.raises(UserError, match="seed"):
            next(bootstrap_weights(10, 3, seed=bad))


@needs_native
@pytest.mark.parametrize("threads", [1, 2])
def test_seeded_bootstrap_kernel_equals_the_counts_path_bit_for_bit(threads):
    """boot_auc_ap_seeded draws its resamples in the kernel; it equals boot_auc_ap on
    boot_counts of the same resamples exactly: by case and by patient, at an offset that
    splits a block, and through the 32-bit fallback (forced by a low byte cap)."""
    C = _native.native_module()
    old = C.num_threads()
    C.set_num_threads(threads)
    try:
        y, s = _data(3000, 4, 3)
        S = np.ascontiguousarray(np.stack([s, s[::-1], np.round(s, 1)]))
        Y = np.ascontiguousarray(np.stack([y, y, y[::-1]]))
        order = K.rank_order(S, Y)
        one = np.zeros((1, y.size), np.int32)
        patients = (np.arange(y.size) // 4).astype(np.int32)
        U_p = int(patients.max()) + 1
        for cluster, U in ((None, y.size), (patients, U_p)):
            for cap in (255, 2):
                got = C.boot_auc_ap_seeded(S, Y, order, 9, 5, 37, cluster, U, cap)
                ref = C.boot_auc_ap(S, Y, C.boot_counts(9, 5, 37, U), one, 1, order, cluster)
                for g, r in zip(got[:2], ref):
                    np.testing.assert_array_equal(g, r)
                assert np.isfinite(got[0]).all()
                point = C.boot_auc_ap(S, Y, np.ones((1, U), np.int32), one, 1, None, cluster)
                for g, r in zip(got[2:4], point):
                    np.testing.assert_array_equal(g, r[:, 0])
                # subgroups (one case in none, one coded twice) and weighted column sums
                codes = np.stack([np.arange(y.size) % 3, np.where(np.arange(y.size) % 7 == 0, -1, 3),
                                  np.arange(y.size) % 3]).astype(np.int32)
                sums = np.random.default_rng(cap).integers(0, 3, (U, 5)).astype(np.float64)
                got_g = C.boot_auc_ap_seeded(S, Y, order, 9, 5, 37, cluster, U, cap, codes, 4, sums)
                counts = C.boot_counts(9, 5, 37, U)
                ref_g = C.boot_auc_ap(S, Y, counts, codes, 4, order, cluster)
                for g, r in zip(got_g[:2], ref_g):
                    np.testing.assert_array_equal(g, r)
                point_g = C.boot_auc_ap(S, Y, np.ones((1, U), np.int32), codes, 4, None, cluster)
                for g, r in zip(got_g[2:4], point_g):
                    np.testing.assert_array_equal(g, r[:, 0])
                np.testing.assert_array_equal(got_g[4], counts.astype(np.float64) @ sums)
            # the kernel's own sort gives the same as the caller's order
            for g, r in zip(C.boot_auc_ap_seeded(S, Y, None, 9, 5, 37, cluster, U), got):
                np.testing.assert_array_equal(g, r)
    finally:
        C.set_num_threads(old)


@needs_native
def test_resample_auc_ap_draws_in_the_kernel_and_equals_the_twin():
    from rv2.evaluate.bootstrap import resample_auc_ap

    rng = np.random.default_rng(2)
    n = 900
    y = (rng.random((n, 3)) < 0.3).astype(float)
    y[rng.random((n, 3)) < 0.1] = np.nan
    models = [np.round(rng.random((n, 3)) + 0.3 * np.nan_to_num(y), 3) for _ in range(2)]
    patients = rng.integers(0, 300, n)
    for clusters in (None, patients):
        fast = resample_auc_ap(y, models, n_boot=50, seed=3, clusters=clusters, native=True)
        paced = resample_auc_ap(y, models, n_boot=600, seed=3, clusters=clusters, native=True,
                                progress=True)  # chunks of 256 for the bar, one shared sort
        np.testing.assert_array_equal(paced.auc[:, :50], fast.auc)
        np.testing.assert_array_equal(paced.point_ap, fast.point_ap)
        # subgroups in two families plus all cases, and weighted counts per group
        groups = np.stack([rng.integers(-1, 3, n), rng.integers(-1, 2, n) + 3,
                           np.full(n, 5)]).astype(np.int32)
        counts = {"den": rng.random((n, 6)) < 0.4, "num": rng.random((n, 6)) < 0.2}
        kw = dict(n_boot=40, seed=5, groups=groups, n_groups=6, counts=counts, clusters=clusters)
        fast_g = resample_auc_ap(y, models, native=True, **kw)
        twin_g = resample_auc_ap(y, models, native=False, **kw)
        for f in ("auc", "ap", "point_auc", "point_ap"):
            np.testing.assert_allclose(getattr(fast_g, f), getattr(twin_g, f), rtol=0, atol=TOL)
        for k in counts:
            np.testing.assert_array_equal(fast_g.extra[k][0], twin_g.extra[k][0])
            np.testing.assert_array_equal(fast_g.extra[k][1], twin_g.extra[k][1])
        twin = resample_auc_ap(y, models, n_boot=50, seed=3, clusters=clusters, native=False)
        np.testing.assert_allclose(fast.auc, twin.auc, rtol=0, atol=TOL)
        np.testing.assert_allclose(fast.ap, twin.ap, rtol=0, atol=TOL)
        assert np.isfinite(fast.auc).all()


@needs_native
def test_seeded_permutation_kernel_equals_explicit_swaps_and_the_twin():
    """perm_auc_ap_seeded (all labels, swaps drawn in the kernel) equals perm_auc_ap on the
    stream's swaps label by label, and permutation_diffs gives the twin's differences."""
    from rv2.evaluate.permutation import permutation_diffs

    C = _native.native_module()
    rng = np.random.default_rng(5)
    n, L = 700, 3
    y = (rng.random((n, L)) < 0.3).astype(float)
    y[rng.random((n, L)) < 0.1] = np.nan
    a = np.round(rng.random((n, L)) + 0.4 * np.nan_to_num(y), 2)
    b = np.round(rng.random((n, L)) * 3 + 0.2 * np.nan_to_num(y), 2)
    T = [np.ascontiguousarray(x.T) for x in (a, b, y)]
    auc, ap, obs_auc, obs_ap = C.perm_auc_ap_seeded(*T, 4, 16, 21)
    sw = C.perm_swaps(4, 16, 21, n)
    none = np.zeros((1, n), np.uint8)
    for j in range(L):
        ra, rp = C.perm_auc_ap(T[0][j], T[1][j], T[2][j], sw)
        np.testing.assert_array_equal(auc[j], ra)
        np.testing.assert_array_equal(ap[j], rp)
        oa, op = C.perm_auc_ap(T[0][j], T[1][j], T[2][j], none)
        np.testing.assert_array_equal(obs_auc[j], oa[0])
        np.testing.assert_array_equal(obs_ap[j], op[0])
    for metric in ("ap", "auroc"):
        obs_n, d_n = permutation_diffs(y, a, b, metric=metric, n_perm=40, seed=4, native=True)
        obs_t, d_t = permutation_diffs(y, a, b, metric=metric, n_perm=40, seed=4, native=False)
        np.testing.assert_allclose(obs_n, obs_t, rtol=0, atol=TOL)
        np.testing.assert_allclose(d_n, d_t, rtol=0, atol=TOL)


@pytest.mark.parametrize("native", [True, False])
def test_rank_order_and_percentile_ranks_on_awkward_scores(native):
    """The native radix sort keeps the stable descending order through negative scores,
    -0.0 against 0.0, subnormals, huge values and ties; midranks equal scipy's."""
    if native and not _native.HAS_NATIVE:
        pytest.skip(f"rv2._C not built ({_native.NATIVE_ERROR})")
    from rv2.evaluate.permutation import percentile_ranks
    from scipy.stats import rankdata

    rng = np.random.default_rng(8)
    odd = np.array([0.0, -0.0, 5e-324, -5e-324, 1e308, -1e308, -1.5, 2.25, 0.5, 0.5])
    s = np.concatenate([odd, np.round(rng.normal(size=500), 1), odd])
    y = (rng.random(s.size) < 0.4).astype(float)
    y[rng.random(s.size) < 0.1] = np.nan
    order = K.rank_order(s, y, native=native)[0]
    known = np.flatnonzero(_known(y))
    np.testing.assert_array_equal(order[:known.size],
                                  known[np.argsort(-s[known], kind="stable")])
    assert (order[known.size:] == -1).all()
    pr = percentile_ranks(np.stack([s, -s], 1), np.stack([y, y], 1), native=native)
    for j, col in enumerate((s, -s)):
        k = ~np.isnan(y)
        np.testing.assert_array_equal(pr[k, j], rankdata(col[k], method="average") / k.sum())
        assert (pr[~k, j] == 0).all()


@pytest.mark.parametrize("native", [None, False])
def test_resampling_tiny_and_empty_inputs(native):
    """One to five cases, B not a multiple of 16, one patient for all: native and twin
    agree (NaN where undefined); no cases at all is an error that says so."""
    from rv2.errors import UserError
    from rv2.evaluate.bootstrap import resample_auc_ap

    rng = np.random.default_rng(4)
    for n in (1, 2, 5):
        y = (np.arange(n) % 2).astype(float)[:, None]
        m = [rng.random((n, 1))]
        for clusters in (None, np.zeros(n)):
            r = resample_auc_ap(y, m, n_boot=17, seed=2, clusters=clusters, native=native)
            t = resample_auc_ap(y, m, n_boot=17, seed=2, clusters=clusters, native=False)
            np.testing.assert_allclose(r.auc, t.auc, rtol=0, atol=TOL)
            assert r.auc.shape == (1, 17, 1, 1)
            if clusters is not None:  # one patient, drawn once: every resample is the point
                np.testing.assert_array_equal(r.auc[0, :, 0, 0], np.full(17, r.point_auc[0, 0, 0]))
    with pytest.raises(UserError, match="no cases"):
        resample_auc_ap(np.zeros((0, 1)), [np.zeros((0, 1))], n_boot=5, native=native)
