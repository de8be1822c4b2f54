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
                   "guided_update", "guided_update_cuda")


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
