"""Image IO on real radiographs and on files written here in every supported format."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from rv2.data import imageio as iio
from rv2.data.imageio import ImageReadError

# ------------------------------------------------------------------ DICOM writer

def write_dicom(path, pixels: np.ndarray, *, photometric="MONOCHROME2", bits_stored=None,
                signed=False, compress_rle=False, **attrs):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        RLELossless,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    if compress_rle:
        ds.compress(RLELossless)
    ds.save_as(path, enforce_file_format=True)
    return path


GRAD12 = (np.arange(64 * 48).reshape(64, 48) % 4096).astype(np.uint16)


# ------------------------------------------------------------------ real files

def test_real_png_jpeg_dicom(real_cxr):
    png = iio.load_image(real_cxr / "00000001_000.png")
    assert png.shape == (512, 512) and png.dtype == np.float32
    ref = np.asarray(Image.open(real_cxr / "00000001_000.png").convert("L"), np.float32) / 255
    np.testing.assert_allclose(png, ref, atol=1e-6)

    rgb = iio.load_image(real_cxr / "16747_3_1.jpg")
    assert rgb.shape == (885, 1036)  # HxW of a 1036x885 RGB JPEG
    pil_l = np.asarray(Image.open(real_cxr / "16747_3_1.jpg").convert("L"), np.float32) / 255
    assert np.abs(rgb - pil_l).max() <= 1 / 255 + 1e-6  # float luma vs Pillow's rounded luma

    dcm = iio.load_image(real_cxr / "siim_sample.dcm")  # JPEG baseline via a pixel handler
    assert dcm.shape == (1024, 1024)
    assert 0.0 <= dcm.min() and dcm.max() <= 1.0 and 0.3 < dcm.mean() < 0.9
    # MONOCHROME2 8-bit without a window: stored value / 255
    import pydicom
    raw = pydicom.dcmread(real_cxr / "siim_sample.dcm").pixel_array
    np.testing.assert_allclose(dcm, raw.astype(np.float32) / 255, atol=1e-6)


def test_real_files_through_transforms(real_cxr):
    img = iio.load_image(real_cxr / "16747_3_1.jpg")
    sq = iio.pad_to_square(img)
    assert sq.shape == (1036, 1036)
    top = (1036 - 885) // 2
    np.testing.assert_array_equal(sq[top:top + 885], img)
    assert np.all(sq[:top] == 0) and np.all(sq[top + 885:] == 0)
    small = iio.resize(sq, 224)
    assert small.shape == (224, 224) and small.dtype == np.float32
    # antialiasing: a 4.6x shrink is close to box-averaging, not to point sampling
    box = np.asarray(Image.fromarray(sq).resize((224, 224), Image.Resampling.BOX))
    assert np.abs(small - box).mean() < 0.01
    xrv = iio.to_xrv_range(small)
    assert xrv.min() >= -1024 and xrv.max() <= 1024
    np.testing.assert_allclose(iio.from_xrv_range(xrv), small, atol=1e-5)


# ------------------------------------------------------------------ PNG / JPEG

def test_png_8_and_16_bit_roundtrip(tmp_path):
    a8 = (np.arange(30 * 40).reshape(30, 40) % 256).astype(np.uint8)
    iio.save_png(tmp_path / "a8.png", a8)
    np.testing.assert_allclose(iio.load_image(tmp_path / "a8.png") * 255, a8, atol=1e-3)
    a16 = (np.arange(30 * 40).reshape(30, 40) * 53).astype(np.uint16)
    iio.save_png(tmp_path / "a16.png", a16)
    assert Image.open(tmp_path / "a16.png").mode.startswith("I")
    np.testing.assert_allclose(iio.load_image(tmp_path / "a16.png") * 65535, a16, atol=0.02)
    f = np.linspace(0, 1, 30 * 40, dtype=np.float32).reshape(30, 40)
    iio.save_png(tmp_path / "f.png", f)
    assert np.abs(iio.load_image(tmp_path / "f.png") - f).max() <= 0.5 / 255 + 1e-6


def test_jpeg_gray_and_rgb(tmp_path):
    g = (np.add.outer(np.arange(64), np.arange(64)) * 2).astype(np.uint8)
    Image.fromarray(g).save(tmp_path / "g.jpg", quality=95)
    out = iio.load_image(tmp_path / "g.jpg")
    assert out.shape == (64, 64) and np.abs(out * 255 - g).mean() < 2
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "r.png")
    np.testing.assert_allclose(iio.load_image(tmp_path / "r.png"), 0.299 * 200 / 255, atol=1e-5)


# ------------------------------------------------------------------ DICOM

def test_dicom_monochrome2_bits_stored_scaling(tmp_path):
    p = write_dicom(tmp_path / "m2.dcm", GRAD12, bits_stored=12)
    np.testing.assert_allclose(iio.load_image(p), GRAD12 / 4095.0, atol=1e-6)


def test_dicom_monochrome1_is_inverted(tmp_path):
    p1 = write_dicom(tmp_path / "m1.dcm", GRAD12, photometric="MONOCHROME1", bits_stored=12)
    np.testing.assert_allclose(iio.load_image(p1), 1 - GRAD12 / 4095.0, atol=1e-6)


def test_dicom_rescale_and_window(tmp_path):
    # stored 0..4095, HU = 2*x - 1024, window centre 0 width 1000 -> [-500, 500] maps to [0,1]
    p = write_dicom(tmp_path / "w.dcm", GRAD12, bits_stored=12, RescaleSlope=2,
                    RescaleIntercept=-1024, WindowCenter=0, WindowWidth=1000)
    out = iio.load_image(p)
    hu = GRAD12.astype(np.float64) * 2 - 1024
    expect = np.clip((hu - (0 - 0.5)) / 999 + 0.5, 0, 1)
    np.testing.assert_allclose(out, expect, atol=1e-5)
    assert out[hu <= -501].max() == 0.0 and out[hu >= 501].min() == 1.0
    # without a window, the stored range through the rescale maps to [0, 1]
    q = write_dicom(tmp_path / "r.dcm", GRAD12, bits_stored=12, RescaleSlope=2,
                    RescaleIntercept=-1024)
    np.testing.assert_allclose(iio.load_image(q), GRAD12 / 4095.0, atol=1e-5)


def test_dicom_window_sigmoid_and_multivalue(tmp_path):
    from pydicom.multival import MultiValue
    from pydicom.valuerep import DSfloat

    p = write_dicom(tmp_path / "s.dcm", GRAD12, bits_stored=12, VOILUTFunction="SIGMOID",
                    WindowCenter=MultiValue(DSfloat, ["2048", "100"]),
                    WindowWidth=MultiValue(DSfloat, ["1024", "50"]))
    out = iio.load_image(p)
    expect = 1 / (1 + np.exp(-4 * (GRAD12 - 2048.0) / 1024))
    np.testing.assert_allclose(out, expect, atol=1e-5)


def test_dicom_voi_lut_sequence(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    item = Dataset()
    lut = (np.arange(4096) // 16).astype(np.uint16)  # 4096 entries, 8-bit output
    item.add_new(0x00283002, "US", [4096, 0, 8])  # LUT Descriptor
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data
    p = write_dicom(tmp_path / "lut.dcm", GRAD12, bits_stored=12,
                    VOILUTSequence=Sequence([item]))
    np.testing.assert_allclose(iio.load_image(p), (GRAD12 // 16) / 255.0, atol=1e-6)


def test_dicom_signed_and_rle_compressed(tmp_path):
    signed = (GRAD12.astype(np.int32) - 2048).astype(np.int16)
    p = write_dicom(tmp_path / "sg.dcm", signed, bits_stored=12, signed=True)
    np.testing.assert_allclose(iio.load_image(p), GRAD12 / 4095.0, atol=1e-6)
    q = write_dicom(tmp_path / "rle.dcm", GRAD12, bits_stored=12, compress_rle=True)
    import pydicom
    assert pydicom.dcmread(q).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"
    np.testing.assert_allclose(iio.load_image(q), GRAD12 / 4095.0, atol=1e-6)


def test_dicom_multiframe_gives_first_frame(tmp_path):
    frames = np.stack([GRAD12, 4095 - GRAD12]).astype(np.uint16)
    p = write_dicom(tmp_path / "mf.dcm", frames[0], bits_stored=12)
    import pydicom
    ds = pydicom.dcmread(p)
    ds.NumberOfFrames = 2
    ds.PixelData = frames.tobytes()
    ds.save_as(p)
    np.testing.assert_allclose(iio.load_image(p), GRAD12 / 4095.0, atol=1e-6)
    with pytest.raises(ImageReadError, match="frame"):
        iio.load_image(p, max_pixels=GRAD12.size + 1)


def test_dicom_without_preamble_magic_by_suffix(tmp_path):
    p = write_dicom(tmp_path / "m2.dcm", GRAD12, bits_stored=12)
    data = p.read_bytes()
    # a DICOM stream without the 128-byte preamble and "DICM" is found by its suffix
    import pydicom
    ds = pydicom.dcmread(p)
    ds.preamble = None
    del ds.file_meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False, implicit_vr=False, little_endian=True)
    raw = tmp_path / "nopreamble.dcm"
    raw.write_bytes(buf.getvalue())
    assert raw.read_bytes()[128:132] != b"DICM" and data[128:132] == b"DICM"
    np.testing.assert_allclose(iio.load_image(raw), GRAD12 / 4095.0, atol=1e-6)


# ------------------------------------------------------------------ failures

def test_errors_name_file_and_reason(tmp_path, real_cxr):
    cases = {}
    cases["missing.png"] = (None, "not found")
    (tmp_path / "empty.png").write_bytes(b"")
    cases["empty.png"] = (None, "empty")
    (tmp_path / "text.png").write_text("hello, I am not an image\n" * 10)
    cases["text.png"] = (None, "not a recognised image")
    png = (real_cxr / "00000001_000.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(png[: len(png) // 2])
    cases["trunc.png"] = (None, "truncated")
    jpg = (real_cxr / "16747_3_1.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(jpg[: len(jpg) // 3])
    cases["trunc.jpg"] = (None, "truncated")
    dcm = (real_cxr / "siim_sample.dcm").read_bytes()
    (tmp_path / "trunc.dcm").write_bytes(dcm[: len(dcm) // 2])
    cases["trunc.dcm"] = (None, "truncated")
    (tmp_path / "hdr.dcm").write_bytes(dcm[:400])
    cases["hdr.dcm"] = (None, "DICOM")
    for name, (_, reason) in cases.items():
        with pytest.raises(ImageReadError, match=reason) as ei:
            iio.load_image(tmp_path / name)
        assert name in str(ei.value) and isinstance(ei.value, ValueError)
        assert ei.value.path.endswith(name)


def test_decompression_bomb_guard(tmp_path, real_cxr):
    with pytest.raises(ImageReadError, match="exceeds the limit"):
        iio.load_image(real_cxr / "00000001_000.png", max_pixels=512 * 511)
    with pytest.raises(ImageReadError, match="exceeds the limit"):
        iio.load_image(real_cxr / "siim_sample.dcm", max_pixels=1000)
    # a 30000 x 30000 PNG header costs a few hundred bytes; it must be refused before decoding
    big = Image.new("1", (30000, 30000))
    big.save(tmp_path / "bomb.png", optimize=True)
    assert (tmp_path / "bomb.png").stat().st_size < 500_000
    with pytest.raises(ImageReadError, match="bomb"):
        iio.load_image(tmp_path / "bomb.png")


def test_dicom_without_pixels(tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # SR document
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientID = "x"
    ds.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    with pytest.raises(ImageReadError, match="no pixel data"):
        iio.load_image(tmp_path / "sr.dcm")


# ------------------------------------------------------------------ transforms

def test_transforms_shapes_and_values():
    img = np.arange(12, dtype=np.float32).reshape(3, 4) / 11
    sq = iio.pad_to_square(img, value=0.5)
    assert sq.shape == (4, 4) and np.all(sq[3] == 0.5)
    np.testing.assert_array_equal(sq[:3], img)
    assert iio.center_crop(img, 2).tolist() == img[0:2, 1:3].tolist()
    assert iio.center_crop(img, (3, 2)).shape == (3, 2)
    with pytest.raises(ValueError, match="at least"):
        iio.center_crop(img, 5)
    const = np.full((100, 60), 0.25, np.float32)
    np.testing.assert_allclose(iio.resize(const, (10, 7)), 0.25, atol=1e-6)
    assert iio.resize(const, 200).shape == (200, 200)
    # antialias: alternating stripes shrink to their mean, not to one of the two values
    stripes = np.tile(np.array([0.0, 1.0], np.float32), (64, 32))
    np.testing.assert_allclose(iio.resize(stripes, 16)[2:-2, 2:-2], 0.5, atol=0.02)
    np.testing.assert_allclose(iio.normalize(np.full((2, 2), 0.5), 0.25, 0.5), 0.5)
    with pytest.raises(ValueError):
        iio.normalize(img, 0, 0)
    with pytest.raises(ValueError, match="2-D"):
        iio.resize(np.zeros((2, 2, 3), np.float32), 4)
