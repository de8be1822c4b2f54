"""Shared fixtures and the skip rules for marked tests."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from rv2 import envs

REPO = Path(__file__).resolve().parents[1]
REAL_CXR = REPO.parent / "shared" / "data" / "real-cxr"


def _has(mod: str) -> bool:
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def pytest_collection_modifyitems(config, items):
    run_slow = envs.run_slow()
    reasons = {
        "slow": None if run_slow else "slow test: set RV2_RUN_SLOW=1 (or make test-all) to run",
        "gpu": None if _cuda() else "needs a CUDA GPU (torch.cuda.is_available() is False)",
        "trt": None if _has("tensorrt") else "needs TensorRT (import tensorrt fails here)",
        "dali": None if _has("nvidia.dali") else "needs NVIDIA DALI (pip install rv2[dali])",
        "ray": None if _has("ray") else "needs Ray (pip install rv2[ray])",
    }
    for item in items:
        for mark, reason in reasons.items():
            if reason and mark in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def real_cxr() -> Path:
    """The shared folder of real radiographs; skips where it is absent."""
    if not REAL_CXR.is_dir():
        pytest.skip(f"real radiographs not found at {REAL_CXR} (shared/ is absent)")
    return REAL_CXR
