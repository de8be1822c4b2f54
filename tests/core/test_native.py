"""rv2._C build information and parity of native ops with their Python twins."""
import numpy as np
import pytest
from rv2 import _native

needs_native = pytest.mark.skipif(not _native.HAS_NATIVE,
                                  reason=f"rv2._C not built ({_native.NATIVE_ERROR})")


@needs_native
def test_build_info_reports_target_and_compiler():
    info = _native.build_info()
    assert info["target"] in ("cpu", "cuda")
    assert info["compiler"].split()[0] in ("GNU", "Clang", "AppleClang", "MSVC", "Intel", "IntelLLVM")
    if info["target"] == "cuda":
        assert "90" in info["cuda_archs"]
    else:
        assert info["cuda_archs"] == ""
    assert info["num_threads"] >= 1


@needs_native
def test_to_uint8_matches_twin_on_edges_and_random():
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.2, 1.2, size=(3, 257, 129)).astype(np.float32)
    # exact half-way points, both ends, NaN and infinities
    edge = np.array([0.5 / 255, 1.5 / 255, 2.5 / 255, 127.5 / 255, 254.5 / 255, 0.0, 1.0,
                     np.nan, np.inf, -np.inf, -0.0, 1e-30], np.float32)
    for arr in (x, edge):
        a = _native.native_module().to_uint8(arr)
        b = _native.to_uint8_py(arr)
        assert a.dtype == np.uint8 and a.shape == arr.shape
        np.testing.assert_array_equal(a, b)
    assert _native.to_uint8(edge)[7] == 0 and _native.to_uint8(edge)[8] == 255


@needs_native
def test_to_uint8_threads_give_same_result():
    m = _native.native_module()
    x = np.random.default_rng(1).random((4, 512, 512), dtype=np.float32)
    before = m.num_threads()
    try:
        m.set_num_threads(1)
        one = m.to_uint8(x)
        m.set_num_threads(4)
        four = m.to_uint8(x)
    finally:
        m.set_num_threads(0)
    np.testing.assert_array_equal(one, four)
    assert m.num_threads() == before


def test_twin_matches_diffusers_convention():
    # diffusers' numpy_to_pil: (images * 255).round().astype("uint8") after clamp(0, 1)
    x = np.linspace(0, 1, 1001, dtype=np.float32)
    ref = (np.clip(x, 0, 1) * 255).round().astype("uint8")
    np.testing.assert_array_equal(_native.to_uint8(x), ref)


@needs_native
def test_copy_finite_copies_bits_and_finds_every_non_finite_value_like_its_twin():
    C = _native.native_module()
    rng = np.random.default_rng(2)
    x = rng.normal(scale=1e30, size=(2, 3, 37, 41)).astype(np.float32)
    x.flat[:6] = [np.finfo(np.float32).max, -np.finfo(np.float32).max, np.finfo(np.float32).tiny,
                  1e-45, -0.0, 0.0]  # finite edges: the largest, subnormal, signed zero
    for src in (x, np.frombuffer(x.tobytes(), np.float32).reshape(x.shape)):  # and a read-only view
        dst, twin = np.empty_like(x), np.empty_like(x)
        assert C.copy_finite(src, dst) is True and _native.copy_finite_py(src, twin) is True
        assert dst.tobytes() == x.tobytes() == twin.tobytes()
    signalling = np.array([0x7F800001], np.uint32).view(np.float32)[0]
    for pos in (0, 1, 3, 4, x.size // 2, x.size - 1):  # every lane of a 16-byte vector, the tail
        for bad in (np.nan, np.inf, -np.inf, signalling):
            y = x.copy()
            y.flat[pos] = bad
            dst = np.empty_like(y)
            assert C.copy_finite(y, dst) is False and _native.copy_finite_py(y, np.empty_like(y)) is False
            assert dst.tobytes() == y.tobytes()  # copied bit for bit all the same
            assert C.copy_finite(y, None) is False and _native.copy_finite_py(y, None) is False
    assert C.copy_finite(x, None) is True
    with pytest.raises(ValueError, match="values"):
        C.copy_finite(x, np.empty(7, np.float32))
    with pytest.raises(TypeError, match="float32"):
        C.copy_finite(x.astype(np.float64), np.empty_like(x))
    with pytest.raises(ValueError, match="read-only"):
        C.copy_finite(x, np.frombuffer(x.tobytes(), np.float32))
