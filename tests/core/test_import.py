"""`import rv2` is cheap: no torch, no model, no GPU, and works without rv2._C."""
import os
import subprocess
import sys

import pytest
from rv2 import _native, envs

HEAVY = ("torch", "diffusers", "transformers", "torchvision", "onnxruntime", "nvidia.dali",
         "tensorrt")


def run_py(code: str, **env) -> subprocess.CompletedProcess:
    e = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e,
                          timeout=120)


def test_import_loads_no_heavy_module():
    code = ("import sys, rv2, rv2.cli, rv2.config, rv2.weights, rv2._native\n"
            f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
            "print('HEAVY', heavy)\n")
    r = run_py(code)
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stdout


def test_cli_help_imports_no_torch():
    code = ("import sys\nfrom click.testing import CliRunner\nimport rv2.cli\n"
            "res = CliRunner().invoke(rv2.cli.main, ['--help'])\n"
            "assert res.exit_code == 0, res.output\n"
            "print('TORCH', 'torch' in sys.modules)\n")
    r = run_py(code)
    assert r.returncode == 0, r.stderr
    assert "TORCH False" in r.stdout


def test_import_initialises_no_gpu():
    # Even with torch importable, rv2 never touches CUDA on import: torch is not
    # loaded, so no CUDA context can exist. Checked with torch imported afterwards.
    code = ("import rv2, rv2.cli, rv2._native\nimport torch\n"
            "print('INIT', torch.cuda.is_initialized())\n")
    r = run_py(code)
    assert r.returncode == 0, r.stderr
    assert "INIT False" in r.stdout


def test_works_without_native_with_one_logged_reason():
    code = ("import logging\nlogging.basicConfig(level=logging.INFO)\n"
            "import numpy as np, rv2._native as n\n"
            "assert not n.HAS_NATIVE\n"
            "print(n.build_info()['target'])\n"
            "print(n.to_uint8(np.array([0.5, 2.0], np.float32)).tolist())\n")
    r = run_py(code, RV2_DISABLE_NATIVE="1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["none", "[128,", "255]"]
    reasons = [ln for ln in r.stderr.splitlines() if "rv2._C not loaded" in ln]
    assert len(reasons) == 1 and "RV2_DISABLE_NATIVE" in reasons[0]


def test_missing_extension_falls_back(tmp_path):
    # A copy of the package without _C*.so: the ImportError is the logged reason.
    import shutil

    import rv2

    pkg = tmp_path / "rv2"
    shutil.copytree(os.path.dirname(rv2.__file__), pkg,
                    ignore=shutil.ignore_patterns("_C*.so", "__pycache__"))
    code = ("import sys; sys.path.insert(0, %r)\nimport rv2, rv2._native as n\n"
            "assert rv2.__file__.startswith(%r), rv2.__file__\n"
            "print(n.HAS_NATIVE, n.NATIVE_ERROR)\n") % (str(tmp_path), str(tmp_path))
    r = run_py(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("False ImportError")


def test_native_required_in_ci():
    if not envs.require_native():
        pytest.skip("RV2_REQUIRE_NATIVE is not set (make test sets it)")
    assert _native.HAS_NATIVE, f"rv2._C failed to load: {_native.NATIVE_ERROR}"
