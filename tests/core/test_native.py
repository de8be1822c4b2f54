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
def test_to_uint8_rounds_every_tie_and_its_neighbours_like_the_twin():
    """The kernel's vector loop (long arrays): each x.5 / 255 and the 4 floats on either
    side of it, each integer / 255, and the clamping edges."""
    ties = (np.arange(256, dtype=np.float32) + np.float32(0.5)) / np.float32(255)
    exact = np.arange(256, dtype=np.float32) / np.float32(255)
    vals = [ties, exact, np.array([-1e-7, 1 - 1e-7, 1 + 1e-7, np.nan, -np.nan], np.float32)]
    up = down = ties
    for _ in range(4):
        up, down = np.nextafter(up, np.float32(2)), np.nextafter(down, np.float32(-1))
        vals += [up, down]
    x = np.concatenate(vals)
    for arr in (x, x[::-1].copy(), np.tile(x, 7)[3:]):   # other alignments of the vector loop
        np.testing.assert_array_equal(_native.native_module().to_uint8(arr), _native.to_uint8_py(arr))


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


def _png_rows(data: bytes) -> tuple[tuple[int, int, int, int], list[int]]:
    """(width, height, bit depth, colour type) and each row's filter byte, read with zlib."""
    import struct
    import zlib

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        assert struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0] == zlib.crc32(kind + body)
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, depth, colour = ihdr
    raw = zlib.decompress(idat)
    stride = w * (3 if colour == 2 else 1) + 1
    assert len(raw) == stride * h
    return ihdr, [raw[i * stride] for i in range(h)]


@pytest.mark.skipif(not _native.features()["png_encode"], reason="rv2._C built without zlib")
def test_png_encode_round_trips_through_pillow_and_uses_every_filter():
    import io

    from PIL import Image

    C = _native.native_module()
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:96, 0:80]
    # rows that favour each filter: flat (None), horizontal ramps (Sub), repeated rows
    # (Up), a smooth field (Average / Paeth), and noise
    mixed = np.concatenate([np.full((8, 80), 7), (xx[:8] * 3) % 256, np.tile(rng.integers(0, 256, 80), (8, 1)),
                            ((xx[:40] * 2 + yy[:40] * 3) // 2) % 256, rng.integers(0, 256, (32, 80))]).astype(np.uint8)
    cases = [mixed, rng.integers(0, 256, (37, 41, 3), dtype=np.uint8), np.array([[200]], np.uint8),
             rng.integers(0, 256, (1, 9), dtype=np.uint8), rng.integers(0, 256, (9, 1, 3), dtype=np.uint8)]
    used = set()
    for img in cases:
        for level in (0, 1, 4, 9):
            data = C.png_encode(img, level)
            back = np.asarray(Image.open(io.BytesIO(data)))
            assert back.shape == img.shape and np.array_equal(back, img)
            (w, h, depth, colour), filters = _png_rows(data)
            assert (w, h, depth, colour) == (img.shape[1], img.shape[0], 8, 2 if img.ndim == 3 else 0)
            if level == 0:
                assert set(filters) == {0}
            used |= set(filters)
        twin = np.asarray(Image.open(io.BytesIO(_native.png_encode_py(img, 4))))
        assert np.array_equal(twin, img)
    assert used == {0, 1, 2, 3, 4}
    # the signed-byte heuristic compresses like Pillow's on a real-looking image
    smooth = ((xx * 0.3 + yy * 0.2) + rng.normal(0, 3, xx.shape)).clip(0, 255).astype(np.uint8)
    assert len(C.png_encode(smooth, 4)) <= 1.05 * len(_native.png_encode_py(smooth, 4))
    for bad, match in ((np.zeros((2, 2, 2), np.uint8), "H x W"), (np.zeros((2, 2, 2, 2), np.uint8), "H x W"),
                       (np.zeros((0, 5), np.uint8), "at least 1 x 1")):
        with pytest.raises(ValueError, match=match):
            C.png_encode(bad, 4)
    with pytest.raises(ValueError, match="level"):
        C.png_encode(mixed, 10)
