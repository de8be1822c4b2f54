"""The DALI decode path against the Pillow path (CPU operators; skipped without DALI)."""
from __future__ import annotations

import numpy as np
import pytest
from rv2.data import imageio as iio
from rv2.data.imageio import ImageReadError

pytestmark = pytest.mark.dali


def real_files(real_cxr):
    return sorted(p for p in real_cxr.iterdir() if p.suffix in (".png", ".jpg", ".dcm"))


@pytest.mark.parametrize("square", ["crop", "pad", "none"])
def test_dali_matches_pillow_on_real_radiographs(real_cxr, square):
    from rv2.data.dali import DaliDecoder, reference_transform

    files = real_files(real_cxr)
    assert any(f.suffix == ".jpg" for f in files) and any(f.suffix == ".png" for f in files)
    dec = DaliDecoder(224, square=square, device_id=None, batch_size=4)
    outs = dec.decode_files(files)
    for f, out in zip(files, outs):
        ref = reference_transform(iio.load_image(f), 224, square)
        assert out.shape == (224, 224) and out.dtype == np.float32
        assert np.abs(out - ref).max() <= 1 / 255, f.name
    # the lossless PNGs agree far tighter than the bound (same filter, same edges)
    png = [i for i, f in enumerate(files) if f.suffix == ".png"]
    for i in png:
        ref = reference_transform(iio.load_image(files[i]), 224, square)
        assert np.abs(outs[i] - ref).max() < 0.01 / 255


def test_dali_16bit_png_and_non_square_offsets(tmp_path):
    from rv2.data.dali import DaliDecoder, reference_transform

    rng = np.random.default_rng(0)
    a16 = (rng.random((101, 157)) * 65535).astype(np.uint16)
    iio.save_png(tmp_path / "a16.png", a16)
    a8 = (rng.random((157, 100)) * 255).astype(np.uint8)
    iio.save_png(tmp_path / "a8.png", a8)
    for square in ("crop", "pad"):
        dec = DaliDecoder(64, square=square)
        outs = dec.decode_files([tmp_path / "a16.png", tmp_path / "a8.png"])
        for name, out in zip(("a16.png", "a8.png"), outs):
            ref = reference_transform(iio.load_image(tmp_path / name), 64, square)
            assert np.abs(out - ref).max() < 0.01 / 255, (square, name)


def test_dali_bad_files_are_named_and_batch_survives(tmp_path, real_cxr):
    from rv2.data.dali import DaliDecoder

    good = real_cxr / "00000001_000.png"
    trunc = tmp_path / "trunc.jpg"
    data = (real_cxr / "16747_3_1.jpg").read_bytes()
    trunc.write_bytes(data[: len(data) // 3])
    missing = tmp_path / "missing.png"
    dec = DaliDecoder(32, batch_size=4)
    with pytest.raises(ImageReadError, match="trunc.jpg|missing.png"):
        dec.decode_files([good, trunc, missing])
    outs = dec.decode_files([good, trunc, missing, good], on_error="none")
    assert outs[0] is not None and outs[3] is not None and outs[1] is None and outs[2] is None
    assert set(dec.errors) == {1, 2} and "not found" in dec.errors[2].reason
    np.testing.assert_array_equal(outs[0], outs[3])
    t = dec.decode_torch([good, good])
    assert tuple(t.shape) == (2, 1, 32, 32)
