"""The one importer of rv2._C.

Every native entry point has a pure-Python twin here with the same contract;
callers use the functions of this module and never import rv2._C themselves.
Set RV2_DISABLE_NATIVE=1 to force the twins (used by parity tests).
"""
from __future__ import annotations

import logging

import numpy as np

from rv2 import envs

log = logging.getLogger("rv2.native")

_C = None
NATIVE_ERROR: str | None = None

if envs.disable_native():
    NATIVE_ERROR = "disabled by RV2_DISABLE_NATIVE"
else:
    try:
        from rv2 import _C  # type: ignore[attr-defined, no-redef]
    except ImportError as exc:  # absent (pure-Python wheel) or broken build
        NATIVE_ERROR = f"{type(exc).__name__}: {exc}"

if _C is None:
    log.info("rv2._C not loaded (%s); using pure-Python twins", NATIVE_ERROR)

HAS_NATIVE = _C is not None


def build_info() -> dict:
    """Target, compiler and CUDA architectures of rv2._C; target 'none' without it."""
    if _C is None:
        return {"target": "none", "compiler": "", "cuda_archs": "", "cuda_version": "",
                "reason": NATIVE_ERROR}
    return dict(_C.build_info())


NATIVE_FEATURES = ("run_pipeline", "next_attempt", "to_uint8", "to_uint8_cuda",
                   "guided_update", "guided_update_cuda", "copy_finite", "png_encode")


def features() -> dict:
    """Which native entry points this build has (scheduler, CPU and CUDA kernels)."""
    return {name: _C is not None and hasattr(_C, name) for name in NATIVE_FEATURES}


def native_module():
    """rv2._C itself, or None; for modules that dispatch their own ops."""
    return _C


def to_uint8_py(x: np.ndarray) -> np.ndarray:
    """Twin of _C.to_uint8: clamp to [0, 1], scale by 255, round half to even, NaN -> 0."""
    x = np.asarray(x, dtype=np.float32)
    y = np.clip(np.nan_to_num(x, nan=0.0), 0.0, 1.0) * np.float32(255.0)
    return np.round(y).astype(np.uint8)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """float32 image(s) in [0, 1] to uint8, native when available."""
    if _C is not None:
        return _C.to_uint8(np.ascontiguousarray(x, dtype=np.float32))
    return to_uint8_py(x)


def guided_update_py(eu, ec, guidance: float, x, hist, A, B, W):
    """Twin of _C.guided_update: e = eu + g (ec - eu); mo = W0 e + W1 h0 + W2 h1 + W3 h2;
    x_next = A x + B mo (A, B, W per row; hist n x 3 x ...); returns (x_next, e)."""
    f = np.float32
    eu, ec, x = (np.ascontiguousarray(a, dtype=f) for a in (eu, ec, x))
    n = x.shape[0]
    m = x.size // n if n else 0
    h = np.ascontiguousarray(hist, dtype=f).reshape(n, 3, m)
    col = (-1,) + (1,) * (x.ndim - 1)
    A, B = np.asarray(A, f).reshape(col), np.asarray(B, f).reshape(col)
    W = np.asarray(W, f).reshape(n, 4)
    e = eu + f(guidance) * (ec - eu)
    ws = [W[:, j].reshape(col) for j in range(4)]
    hs = [h[:, j].reshape(x.shape) for j in range(3)]
    mo = ws[0] * e + ws[1] * hs[0] + ws[2] * hs[1] + ws[3] * hs[2]
    return A * x + B * mo, e


def guided_update(eu, ec, guidance: float, x, hist, A, B, W):
    """CFG combine + per-row scheduler update (float32 numpy), native when available."""
    if _C is not None and hasattr(_C, "guided_update"):
        out, e = _C.guided_update(eu, ec, float(guidance), x, hist, A, B, W)
        return out, e
    return guided_update_py(eu, ec, guidance, x, hist, A, B, W)


def copy_finite_py(src: np.ndarray, dst: np.ndarray | None) -> bool:
    """Twin of _C.copy_finite: copy src into dst (same size; None: only check); False if
    src holds a NaN or an infinity."""
    if dst is None:
        return bool(np.isfinite(src).all())
    np.copyto(dst, np.asarray(src).reshape(dst.shape), casting="same_kind")
    return bool(np.isfinite(dst).all())


def copy_finite(src: np.ndarray, dst: np.ndarray | None) -> bool:
    """Copy a float32 tensor into `dst` (a float32, C-contiguous slice of a batch; None to
    only check) and say whether all its values are finite: one pass natively, where the
    twin takes two."""
    if (_C is not None and hasattr(_C, "copy_finite") and src.dtype == np.float32
            and src.flags.c_contiguous and (dst is None or src.size == dst.size)):
        return bool(_C.copy_finite(src, dst))
    return copy_finite_py(src, dst)


def png_encode_py(img: np.ndarray, level: int) -> bytes:
    """Twin of _C.png_encode (Pillow's encoder): the same pixels, other bytes."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img, mode="L" if img.ndim == 2 else "RGB").save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def png_encode(img: np.ndarray, level: int) -> bytes:
    """PNG bytes of an H x W or H x W x 3 uint8 image at zlib level 0..9: natively with
    the GIL released where rv2._C was built with zlib, else Pillow."""
    if _C is not None and hasattr(_C, "png_encode"):
        return _C.png_encode(np.ascontiguousarray(img), int(level))
    return png_encode_py(img, level)
