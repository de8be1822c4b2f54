"""Every `RV2_*` environment variable rv2 reads at run time, in one place.

Build-time variables (`RV2_TARGET_DEVICE`, `RV2_CUDA_ARCHS`, `RV2_BUILD_TYPE`,
`RV2_CMAKE_BUILD_DIR`) are read by setup.py, which cannot import rv2.
"""
from __future__ import annotations

import os
from pathlib import Path

# name -> what it does (listed by `rv2 doctor`).
VARIABLES = {
    "RV2_WEIGHTS_DIR": "extra folders searched for model weights (os.pathsep-separated), before the caches",
    "RV2_CACHE_DIR": "rv2's cache root (default ~/.cache/rv2): weights/ and engines/ below it",
    "RV2_DISABLE_NATIVE": "1 forces the pure-Python twins of rv2._C (parity tests)",
    "RV2_REQUIRE_NATIVE": "1 makes the test suite fail when rv2._C cannot be loaded",
    "RV2_RUN_SLOW": "1 runs the tests marked slow",
    "RV2_SERVE_TOKEN": "bearer token `rv2 serve` requires from clients (or --token-file)",
}


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def disable_native() -> bool:
    return _flag("RV2_DISABLE_NATIVE")


def require_native() -> bool:
    return _flag("RV2_REQUIRE_NATIVE")


def run_slow() -> bool:
    return _flag("RV2_RUN_SLOW")


def weights_dirs() -> list[Path]:
    raw = os.environ.get("RV2_WEIGHTS_DIR", "")
    return [Path(d).expanduser() for d in raw.split(os.pathsep) if d.strip()]


def cache_dir() -> Path:
    raw = os.environ.get("RV2_CACHE_DIR", "").strip()
    return Path(raw).expanduser() if raw else Path("~/.cache/rv2").expanduser()


def snapshot() -> dict[str, str | None]:
    """The variables that are set (for `rv2 doctor` and run metadata)."""
    return {k: os.environ.get(k) for k in VARIABLES if k in os.environ}


__all__ = ["VARIABLES", "disable_native", "require_native", "run_slow", "weights_dirs",
           "cache_dir", "snapshot"]
