"""Image IO: every radiograph format rv2 reads, into one float image.

`load_image(path)` returns a float32 HxW grayscale array in [0, 1] for

- PNG, 8 bit (divided by 255) and 16 bit (divided by 65535, as torchxrayvision
  does for PadChest, unless the image holds 10/12/14-bit values: see
  `sixteen_bit_full_scale`), palette / RGB(A) PNGs converted to luma;
- JPEG, grayscale or colour: a YCbCr/RGB JPEG is decoded to its luma (Y)
  channel only (ITU-R 601 weights, as the encoder stored it); CMYK and other
  colour images go to luma with 0.299/0.587/0.114 in float;
- DICOM, any transfer syntax pydicom has a pixel handler for (JPEG baseline
  goes through Pillow): the modality LUT (Rescale Slope/Intercept or a Modality
  LUT Sequence), then the VOI transform (a VOI LUT Sequence, else the first
  Window Center/Width with its VOI LUT Function LINEAR, LINEAR_EXACT or
  SIGMOID); without a VOI transform the value range that the stored bits can
  take (after the modality LUT) maps to [0, 1], so no per-image stretch.
  MONOCHROME1 is inverted so that bone is bright in every output. Multi-frame
  files give their first frame.

Failures (missing, empty, truncated, not an image, more pixels than
`max_pixels`, a DICOM without pixel data or without a pixel handler) raise
`ImageReadError`, a ValueError that names the file and the reason.

The three downstream value conventions: [0, 1] (diffusion VAE input after
`*2-1`, DALI parity), torchxrayvision's [-1024, 1024] (`to_xrv_range`) and a
dataset mean/std (`normalize`). Transforms: `pad_to_square`, `center_crop`,
`resize` (bilinear with antialias when shrinking: Pillow's triangle filter
scaled by the reduction factor, edges replicated, which DALI's
`resize(antialias=True)` matches; see `rv2.data.dali`).
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from rv2._native import to_uint8 as _to_uint8
from rv2.errors import UserError
from rv2.files import atomic_path

PathLike = Union[str, os.PathLike]

# Largest chest radiographs are ~4300 x 4300; 8192^2 leaves room and stops bombs.
DEFAULT_MAX_PIXELS = 8192 * 8192

# ITU-R BT.601 luma weights (those Pillow uses for RGB -> L).
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

XRV_MAX = 1024.0


class ImageReadError(UserError):
    """An image that cannot be read; `path` and `reason` say which and why."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


# ------------------------------------------------------------------ decoding

def sniff_format(head: bytes) -> str | None:
    """'png', 'jpeg', 'dicom' or None from the first 132 bytes of a file."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    return None


def load_image(path: PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read one radiograph file as float32 HxW grayscale in [0, 1]."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(p, "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(p, "is a directory, not an image file") from None
    except OSError as exc:
        raise ImageReadError(p, f"cannot open: {exc.strerror or exc}") from exc
    dicom_hint = p.suffix.lower() in (".dcm", ".dicom")
    return decode_image(data, name=str(p), max_pixels=max_pixels, dicom_hint=dicom_hint)


def decode_image(data: bytes, *, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS,
                 dicom_hint: bool = False) -> np.ndarray:
    """Decode encoded bytes (PNG, JPEG, DICOM or another Pillow format) like `load_image`."""
    if not data:
        raise ImageReadError(name, "empty file (0 bytes)")
    kind = sniff_format(data[:132])
    if kind == "dicom" or (kind is None and dicom_hint):
        return _decode_dicom(data, name, max_pixels)
    return _decode_pillow(data, name, max_pixels)


def _decode_pillow(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageReadError(name, "not a recognised image (expected PNG, JPEG or DICOM)") \
            from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(name, f"decompression bomb refused: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(name, f"corrupt header: {exc}") from exc
    w, h = im.size
    if w * h > max_pixels:
        raise ImageReadError(name, f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} "
                                   "(decompression bomb guard; raise max_pixels if genuine)")
    if w == 0 or h == 0:
        raise ImageReadError(name, f"image has zero size {w}x{h}")
    if im.format == "JPEG" and im.mode in ("RGB", "YCbCr"):
        # Decode only the luma channel (libjpeg's grayscale output): the Y the encoder
        # stored, 5x faster than RGB + conversion, and what DALI's GRAY decode gives.
        im.draft("L", im.size)
    try:
        im.load()
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError/SyntaxError/zlib errors
        raise ImageReadError(name, f"truncated or corrupt {im.format or ''} data: {exc}") \
            from exc
    if im.format == "PNG" and im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im).astype(np.float32)
        return np.clip(a * np.float32(1 / sixteen_bit_full_scale(a, png_sbit(data), name)),
                       0.0, 1.0)
    return pil_to_float(im, name)


def png_sbit(data: bytes) -> int | None:
    """The significant bits of a grayscale PNG's sBIT chunk, None when absent."""
    pos = 8
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        if kind == b"sBIT" and length >= 1:
            return int(data[pos + 8])
        if kind in (b"IDAT", b"IEND"):  # sBIT precedes the image data
            return None
        pos += 12 + length
    return None


def sixteen_bit_full_scale(a: np.ndarray, sbit: int | None, name: str) -> int:
    """The white level of a 16-bit PNG. Scanners and converters often store 12-bit
    (or 10/14-bit) values unshifted in 16-bit PNGs, which the /65535 rule reads
    nearly black. An sBIT chunk saying b bits, with every value below 2**b, gives
    2**b - 1; without sBIT, a maximum below 4096 is taken as 12-bit data (with a
    warning, as no image that uses 16 bits is that dark); else 65535."""
    peak = int(a.max()) if a.size else 0
    if sbit is not None and 0 < sbit < 16 and peak < (1 << sbit):
        return (1 << sbit) - 1
    if sbit is None and 0 < peak < 4096:
        warnings.warn(f"{name}: 16-bit PNG whose values stay below 4096 (max {peak}) and no "
                      "sBIT chunk: read as 12-bit data (white = 4095); write an sBIT chunk to "
                      "state the bit depth", ImageDepthWarning, stacklevel=3)
        return 4095
    return 65535


class ImageDepthWarning(UserWarning):
    """A 16-bit PNG whose bit depth was inferred from its values."""


def pil_to_float(im, name: str = "<image>") -> np.ndarray:
    """A loaded Pillow image to float32 HxW in [0, 1] by its bit depth."""
    mode = im.mode
    if mode == "L":
        return np.asarray(im, dtype=np.float32) * np.float32(1 / 255)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(im).astype(np.float32) * np.float32(1 / 65535)
    if mode == "I":
        # 16-bit PNGs open as "I" in some Pillow versions; values are 0..65535.
        a = np.asarray(im).astype(np.float32)
        return np.clip(a * np.float32(1 / 65535), 0.0, 1.0)
    if mode == "F":
        return np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
    if mode == "1":
        return np.asarray(im.convert("L"), dtype=np.float32) * np.float32(1 / 255)
    if mode == "LA":
        return np.asarray(im.getchannel(0), dtype=np.float32) * np.float32(1 / 255)
    if mode in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32)
        return rgb_to_gray(rgb) * np.float32(1 / 255)
    raise ImageReadError(name, f"unsupported Pillow image mode {mode!r}")


def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 (any scale) to HxW float32 luma with ITU-R 601 weights."""
    return np.tensordot(rgb.astype(np.float32, copy=False), LUMA, axes=([-1], [0])) \
        .astype(np.float32, copy=False)


def _decode_dicom(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except InvalidDicomError as exc:
        raise ImageReadError(name, f"not a DICOM file: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - truncated headers raise various errors
        raise ImageReadError(name, f"corrupt or truncated DICOM header: {type(exc).__name__}: "
                                   f"{exc}") from exc
    eof = [str(w.message) for w in caught if "End of file" in str(w.message)]
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        if eof or _PIXEL_DATA_TAG in data:
            raise ImageReadError(name, "DICOM is truncated: the file ends inside its data"
                                       + (f" ({eof[0]})" if eof else ""))
        if len(ds) == 0:
            raise ImageReadError(name, "not a DICOM file (no data elements could be read)")
        raise ImageReadError(name, "DICOM has no pixel data (not an image object?)")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        raise ImageReadError(name, "DICOM lacks Rows/Columns") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if rows * cols * frames > max_pixels:
        raise ImageReadError(name, f"{cols}x{rows}x{frames} frame(s) = {rows * cols * frames} "
                                   f"pixels exceeds the limit of {max_pixels} "
                                   "(decompression bomb guard)")
    _ensure_transfer_syntax(ds)
    try:
        arr = ds.pixel_array
        if frames > 1:
            arr = arr[0]  # multi-frame: the first frame
    except (NotImplementedError, RuntimeError) as exc:
        tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "?")
        raise ImageReadError(name, f"no usable pixel handler for transfer syntax {tsyntax} "
                                   f"({getattr(tsyntax, 'name', '')}): {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - truncated pixel data etc.
        raise ImageReadError(name, f"cannot decode DICOM pixel data: {type(exc).__name__}: "
                                   f"{exc}") from exc
    return dicom_to_float(ds, arr, name)


def _ensure_transfer_syntax(ds) -> None:
    """A DICOM stream without file meta (no preamble) gets the encoding pydicom read it with."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import (
        ExplicitVRBigEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    )

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        return
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                              ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


# (7FE0,0010) Pixel Data tag, little endian: present in the bytes of a cut-off image file.
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"


def dicom_to_float(ds, arr: np.ndarray, name: str = "<dicom>") -> np.ndarray:
    """Stored DICOM pixels to float32 [0, 1]: modality LUT, VOI, MONOCHROME1 inversion."""
    from pydicom.pixels import apply_modality_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and not photometric.startswith("MONOCHROME"):
        # pydicom already converted YBR to RGB; a colour radiograph becomes luma.
        bits = int(ds.get("BitsStored", 8) or 8)
        return np.clip(rgb_to_gray(arr[..., :3]) / np.float32(2 ** bits - 1), 0, 1)
    if arr.ndim != 2:
        raise ImageReadError(name, f"unexpected DICOM pixel array shape {arr.shape}")

    bits = int(ds.get("BitsStored", 16) or 16)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    try:
        values = apply_modality_lut(arr, ds).astype(np.float32, copy=False)
        # Range the stored bits can take, through the same modality transform.
        ends = apply_modality_lut(np.array([lo, hi], dtype=arr.dtype if signed else np.int64),
                                  ds).astype(np.float64)
    except Exception as exc:  # noqa: BLE001 - malformed LUTs
        raise ImageReadError(name, f"bad modality LUT: {exc}") from exc
    lo_v, hi_v = float(np.min(ends)), float(np.max(ends))

    out = _apply_voi(ds, values, arr, name)
    if out is None:
        span = hi_v - lo_v if hi_v > lo_v else 1.0
        out = (values - np.float32(lo_v)) / np.float32(span)
    out = np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)
    if photometric == "MONOCHROME1":
        out = np.float32(1.0) - out
    return out


def _first_value(v) -> float:
    """First of a possibly multi-valued DS element (several windows may be listed)."""
    if isinstance(v, (str, bytes, int, float)):
        return float(v)
    return float(v[0])


def _apply_voi(ds, values: np.ndarray, stored: np.ndarray, name: str) -> np.ndarray | None:
    """The VOI transform as float [0, 1], or None when the file has none."""
    seq = ds.get("VOILUTSequence")
    if seq:
        try:
            return lut_lookup(seq[0], values)
        except Exception as exc:  # noqa: BLE001
            raise ImageReadError(name, f"bad VOI LUT Sequence: {exc}") from exc
    if "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            c = _first_value(ds.WindowCenter)
            w = _first_value(ds.WindowWidth)
        except (TypeError, ValueError):
            return None
        if not (w > 0) or not np.isfinite(c):
            return None
        fn = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
        return window(values, c, w, fn)
    return None


def lut_lookup(item, values: np.ndarray) -> np.ndarray:
    """A VOI LUT item (PS3.3 C.11.2.1.1) applied to values, scaled to [0, 1] by its bit depth.

    Inputs below the first mapped value take the first entry, above the last the last.
    """
    n, first, bits = (int(v) for v in item.LUTDescriptor)
    n = n or 65536
    raw = item.LUTData
    if isinstance(raw, (bytes, bytearray)):
        lut = np.frombuffer(raw, dtype="<u2" if len(raw) >= 2 * n else np.uint8)[:n]
    else:
        lut = np.asarray(raw if isinstance(raw, (list, tuple)) or hasattr(raw, "__len__")
                         else [raw], dtype=np.float64)[:n]
    if len(lut) < n:
        raise UserError(f"LUT Data has {len(lut)} entries, its descriptor says {n}")
    idx = np.clip(np.rint(values).astype(np.int64) - first, 0, n - 1)
    top = float(2 ** bits - 1) if bits > 0 else float(max(lut.max(), 1))
    return (lut.astype(np.float32)[idx] / np.float32(top)).astype(np.float32)


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") \
        -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing into [0, 1] (LINEAR, LINEAR_EXACT, SIGMOID)."""
    x = values.astype(np.float32, copy=False)
    if function == "SIGMOID":
        return (1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))).astype(np.float32)
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0).astype(np.float32)
    if width < 1:
        raise UserError(f"LINEAR window width must be >= 1, got {width}")
    if width == 1:
        return (x > center - 0.5).astype(np.float32)
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------ transforms

def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def _check2d(img: np.ndarray, what: str) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 2:
        raise UserError(f"{what} expects a 2-D grayscale image, got shape {img.shape}")
    return img


def pad_to_square(img: np.ndarray, value: float = 0.0) -> np.ndarray:
    """Pad the short side symmetrically (odd pixel at the bottom/right) with `value`."""
    img = _check2d(img, "pad_to_square")
    h, w = img.shape
    s = max(h, w)
    top, left = (s - h) // 2, (s - w) // 2
    if h == w:
        return img
    out = np.full((s, s), value, dtype=img.dtype)
    out[top:top + h, left:left + w] = img
    return out


def center_crop(img: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """The central `size` (int: square, or (h, w)) window; the image must be at least that big."""
    img = _check2d(img, "center_crop")
    th, tw = _hw(size)
    h, w = img.shape
    if th > h or tw > w:
        raise UserError(f"center_crop to {th}x{tw} needs an image at least that big, got {h}x{w}")
    top, left = (h - th) // 2, (w - tw) // 2
    return img[top:top + th, left:left + tw]


def resize(img: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """Bilinear resize to `size` (int: square, or (h, w)), antialiased when shrinking.

    Pillow's triangle filter widened by the reduction factor; pixels beyond the
    border are the edge pixels repeated (as DALI's and OpenCV's resize do, so the
    DALI path matches this one to ~0.003/255). Float32 in, float32 out.
    """
    from PIL import Image

    img = _check2d(img, "resize")
    th, tw = _hw(size)
    if th <= 0 or tw <= 0:
        raise UserError(f"resize target must be positive, got {th}x{tw}")
    if img.shape == (th, tw):
        return img.astype(np.float32, copy=False)
    h, w = img.shape
    # the filter reaches scale+1 source pixels out; replicate the edge that far
    p = int(np.ceil(max(h / th, w / tw, 1.0))) + 2
    padded = np.pad(np.asarray(img, dtype=np.float32), p, mode="edge")
    im = Image.fromarray(padded)  # mode F
    out = im.resize((tw, th), Image.Resampling.BILINEAR, box=(p, p, p + w, p + h))
    return np.asarray(out, dtype=np.float32)


def to_xrv_range(img01: np.ndarray) -> np.ndarray:
    """[0, 1] -> torchxrayvision's [-1024, 1024]."""
    return ((np.asarray(img01, dtype=np.float32) * 2.0 - 1.0) * XRV_MAX).astype(np.float32)


def from_xrv_range(img: np.ndarray) -> np.ndarray:
    """torchxrayvision's [-1024, 1024] -> [0, 1]."""
    return ((np.asarray(img, dtype=np.float32) / XRV_MAX + 1.0) * 0.5).astype(np.float32)


def normalize(img: np.ndarray, mean: float | Sequence[float], std: float | Sequence[float]) \
        -> np.ndarray:
    """(img - mean) / std, e.g. ImageNet statistics on a [0, 1] image."""
    mean_a = np.asarray(mean, dtype=np.float32)
    std_a = np.asarray(std, dtype=np.float32)
    if np.any(std_a <= 0):
        raise UserError(f"normalize: std must be positive, got {std}")
    return ((np.asarray(img, dtype=np.float32) - mean_a) / std_a).astype(np.float32)


def to_uint8(img01: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 (clamped, rounded; native when built)."""

    return _to_uint8(np.ascontiguousarray(img01, dtype=np.float32))


def save_png(path: PathLike, img: np.ndarray) -> Path:
    """Write a PNG: uint8 (HxW or HxWx3) as is, uint16 HxW as 16-bit, float [0,1] as 8-bit.

    Written via a temporary file and a rename, so a crash never leaves half a PNG.
    """
    from PIL import Image

    path = Path(path)
    a = np.asarray(img)
    if a.dtype == np.uint8:
        pass
    elif a.dtype == np.uint16:
        if a.ndim != 2:
            raise UserError(f"save_png: 16-bit images must be HxW, got {a.shape}")
    elif np.issubdtype(a.dtype, np.floating):
        a = to_uint8(a)
    else:
        raise UserError(f"save_png: expected uint8, uint16 or float [0,1], got {a.dtype}")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))):
        raise UserError(f"save_png: expected HxW or HxWx3/4, got shape {a.shape}")
    if a.dtype == np.uint16:
        im = Image.fromarray(a.astype("<u2").copy())  # Pillow picks I;16
    else:
        im = Image.fromarray(np.ascontiguousarray(a))
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")
    return path
