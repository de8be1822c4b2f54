"""The wheel: built with rv2/_C*.so, installable in a fresh venv (slow: builds and installs)."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_make_wheel_check():
    r = subprocess.run(["make", "-C", str(REPO), "wheel-check"], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "target=cpu" in r.stdout and "status: ok" in r.stdout
    wheels = list((REPO / "dist").glob("*.whl"))
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert any(n.startswith("rv2/_C") and n.endswith(".so") for n in names)


@pytest.mark.slow
def test_empty_target_builds_pure_python_wheel(tmp_path):
    env = dict(os.environ, RV2_TARGET_DEVICE="empty")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (whl,) = tmp_path.glob("rv2-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    assert "rv2/_native.py" in names and not any("/_C" in n for n in names)
