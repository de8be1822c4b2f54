"""DeLong test against R pROC (gold reference) and an independent O(m n) variance."""
import math

import numpy as np
import pytest
from rv2 import _native
from rv2.evaluate import delong_test

# Fixed vectors; the same ones are in tools/delong_reference.R, whose output
# (pROC 1.18.0, roc.test(paired = TRUE, method = "delong"), direction "<") is PROC below.
DELONG_CASES = {
    "ties": dict(
        y=[0, 0, 0, 1, 1, 0, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 1, 1, 0, 0, 0, 0, 0],
        a=[0.4, 0.2, 0.0, 0.6, 1.0, 0.2, 0.7, 0.0, 0.7, 0.1, 0.6, 1.1, 0.8, 0.7, 0.5, 0.6, 0.1, 0.4, 0.4, 0.7, 0.7, 0.9, 0.0, 0.7, 0.7, 0.1, 0.7, 0.3, 0.8, 0.5],
        b=[0.5, 0.6, 0.6, 0.3, 0.6, 0.2, 0.6, 0.1, 0.9, 0.2, 0.8, 0.5, 1.0, 0.6, 0.1, 0.8, 0.9, 0.8, 0.5, 0.1, 0.4, 1.0, 0.5, 0.4, 1.0, 0.6, 0.5, 0.3, 0.4, 0.2]),
    "correlated": dict(
        y=[1, 0, 1, 0, 1, 0, 1, 1, 1, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 1, 1, 0, 0],
        a=[0.506, -0.701, 1.093, -1.382, -0.047, -0.246, 0.722, -0.501, 0.212, 2.224, -1.428, -1.137, 0.851, 0.586, -1.201, 0.761, -0.429, -2.256, 1.406, -0.523, -0.372, -0.655, 1.063, -0.361, 1.027, -0.096, -1.912, 2.779, 0.448, 0.285, 0.241, -0.671, -0.136, 0.589, -0.261, 0.703, 1.6, 2.166, 0.58, 1.037, -1.548, -3.008, 1.684, 2.633, -0.117, 0.956, 0.311, 1.396, 1.0, -0.432, 1.488, -1.227, 2.264, 0.77, 1.981, 1.358, 2.74, -0.487, -1.142, 0.181],
        b=[0.517, -0.7, -0.654, 0.645, 1.63, -0.7, 0.84, -0.514, -2.036, 2.429, -0.714, -0.996, 0.184, 1.219, -1.579, 1.223, -0.398, -1.765, 2.405, -0.412, -0.201, -2.024, 2.153, 0.136, 1.099, -0.64, -1.139, 2.086, -0.084, 0.149, 0.604, 0.617, -0.119, 0.589, -0.707, 0.004, 1.744, 2.131, 1.328, 0.74, -1.34, -1.429, 2.161, 1.292, -0.3, 0.987, 0.858, -0.284, 0.757, -1.054, 2.134, -1.786, 1.866, 1.561, 1.254, 1.458, 2.218, -0.547, -2.384, 1.14]),
    "coarse": dict(
        y=[1, 0, 1, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1, 1, 1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 1],
        a=[2.0, 1.0, 2.0, 0.0, 2.0, 1.0, 0.0, 0.0, 1.0, 2.0, 1.0, 0.0, 1.0, 1.0, 0.0, 2.0, 2.0, 1.0, 1.0, 1.0, 2.0, 0.0, 1.0, 2.0, 0.0, 2.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 2.0, 2.0, 2.0, 1.0, 0.0, 1.0],
        b=[0.0, 0.0, 0.0, 2.0, 2.0, 0.0, 1.0, 2.0, 2.0, 1.0, 2.0, 0.0, 2.0, 2.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 2.0, 1.0, 1.0, 1.0, 2.0, 0.0, 0.0, 1.0, 2.0, 1.0, 2.0, 2.0, 1.0, 2.0, 2.0, 0.0, 1.0, 0.0, 1.0]),
}

PROC = {
    "ties": dict(auc_a=0.8825, auc_b=0.6825, z=1.8205369912205, p=0.0686772683048306),
    "correlated": dict(auc_a=0.861952861952862, auc_b=0.797979797979798, z=1.46707884878554,
                       p=0.142354607201193),
    "coarse": dict(auc_a=0.928388746803069, auc_b=0.400255754475703, z=5.37895735349409,
                   p=7.49184512709312e-08),
}

MODES = [False] + ([True] if _native.HAS_NATIVE else [])


@pytest.mark.parametrize("native", MODES)
@pytest.mark.parametrize("name", sorted(DELONG_CASES))
def test_matches_pROC(name, native):
    c, ref = DELONG_CASES[name], PROC[name]
    r = delong_test(c["y"], c["a"], c["b"], native=native)
    assert r.auc_a == pytest.approx(ref["auc_a"], abs=1e-12)
    assert r.auc_b == pytest.approx(ref["auc_b"], abs=1e-12)
    assert r.z == pytest.approx(ref["z"], abs=1e-6)
    assert r.p == pytest.approx(ref["p"], abs=1e-6, rel=1e-6)


def _psi(x, y):
    return (x > y) + 0.5 * (x == y)


def _slow_delong(y, a, b):
    """DeLong 1988 structural components, written out over all m x n pairs."""
    y = np.asarray(y)
    out = []
    for s in (np.asarray(a, float), np.asarray(b, float)):
        x, z = s[y == 1], s[y == 0]
        psi = _psi(x[:, None], z[None, :]).astype(float)  # (m, n)
        out.append((psi.mean(), psi.mean(axis=1), psi.mean(axis=0)))
    m, n = (y == 1).sum(), (y == 0).sum()
    v10 = np.stack([o[1] for o in out])
    v01 = np.stack([o[2] for o in out])
    s10 = np.cov(v10)
    s01 = np.cov(v01)
    s = s10 / m + s01 / n
    var = s[0, 0] + s[1, 1] - 2 * s[0, 1]
    z = (out[0][0] - out[1][0]) / math.sqrt(var)
    return out[0][0], out[1][0], z, math.erfc(abs(z) / math.sqrt(2))


def test_matches_independent_quadratic_implementation():
    rng = np.random.default_rng(3)
    for n, dec in [(80, 1), (150, 3), (60, 0)]:
        y = (rng.random(n) < 0.4).astype(int)
        a = np.round(rng.normal(size=n) + y, dec)
        b = np.round(rng.normal(size=n) + 0.5 * y, dec)
        r = delong_test(y, a, b)
        ref = _slow_delong(y, a, b)
        assert (r.auc_a, r.auc_b) == pytest.approx(ref[:2], abs=1e-12)
        assert r.z == pytest.approx(ref[2], abs=1e-9)
        assert r.p == pytest.approx(ref[3], abs=1e-9)


def test_identical_models_and_unknown_labels():
    c = DELONG_CASES["ties"]
    r = delong_test(c["y"], c["a"], c["a"])
    assert r.z == 0.0 and r.p == 1.0 and r.var == 0.0
    # unknown labels (-1, NaN) are left out: same result as dropping them
    y = np.array(c["y"], float)
    y2 = np.r_[y, -1, np.nan]
    a2, b2 = np.r_[c["a"], 0.3, np.nan], np.r_[c["b"], 0.9, 0.1]
    assert delong_test(y2, a2, b2).p == pytest.approx(delong_test(y, c["a"], c["b"]).p)
    r2 = delong_test(y, c["a"], c["b"])
    lo, hi = r2.ci()
    assert lo < r2.diff < hi and hi - lo == pytest.approx(2 * 1.959963984540054 * math.sqrt(r2.var))


def test_errors_are_clear():
    with pytest.raises(ValueError, match="at least 2 positives"):
        delong_test([1, 0, 0, 0], [0.1, 0.2, 0.3, 0.4], [0.2, 0.1, 0.3, 0.4])
    with pytest.raises(ValueError, match="scores_b.*NaN or infinite"):
        delong_test([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4], [0.2, np.nan, 0.3, 0.4])
    with pytest.raises(ValueError, match="labels must be 1"):
        delong_test([2, 1, 0, 0], [0.1, 0.2, 0.3, 0.4], [0.2, 0.1, 0.3, 0.4])
