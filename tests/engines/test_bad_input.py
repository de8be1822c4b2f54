"""Each bad input is one line that names the file and the fix."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from rv2.cli import main
from rv2.engines.runtime import load
from rv2.errors import UserError, one_line

from .conftest import DEMO


def _copy(demo_engines, tmp_path):
    dst = tmp_path / "eng"
    shutil.copytree(demo_engines["out"], dst)
    return dst


def _err(fn) -> str:
    with pytest.raises(UserError) as exc:
        fn()
    msg = one_line(exc.value)
    assert "\n" not in str(exc.value).strip()
    return msg


def test_corrupt_engine_file(demo_engines, tmp_path):
    eng = _copy(demo_engines, tmp_path)
    f = eng / "classifier" / "model.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    msg = _err(lambda: load(eng).runner("classifier"))
    assert str(f) in msg and "corrupt" in msg and "rebuild with: rv2 build-engines" in msg


def test_manifest_from_another_gpu_or_toolkit(demo_engines, tmp_path):
    eng = _copy(demo_engines, tmp_path)
    mpath = eng / "qc_sex" / "onnxruntime" / "manifest.json"
    m = json.loads(mpath.read_text())
    m["machine"].update(device_type="cuda", device_name="NVIDIA A100-SXM4-40GB", compute_capability="8.0")
    mpath.write_text(json.dumps(m))
    msg = _err(lambda: load(eng, device="cpu").runner("qc_sex"))
    assert str(mpath) in msg and "device_type=cuda" in msg and "device_type=cpu" in msg
    assert "rebuild here with:" in msg
    # An AOTInductor package needs the torch it was built with.
    m["machine"]["device_type"] = "cpu"
    m["backend"] = "aotinductor"
    m["machine"]["torch"] = "2.0.0"
    from rv2.engines.manifest import check_machine, machine_info

    msg = _err(lambda: check_machine(m, mpath, machine_info("cpu")))
    assert "torch=2.0.0" in msg and f"torch={torch.__version__}" in msg


def test_batch_outside_the_profile(demo_engines):
    runner = load(demo_engines["out"]).runner("unet")
    lo, hi = runner.min_batch, runner.max_batch
    x = torch.zeros(hi + 2, 4, 16, 16)
    msg = _err(lambda: runner(x, torch.ones(hi + 2), torch.zeros(hi + 2, 77, 32)))
    assert f"batch {hi + 2} is outside" in msg and f"[{lo}, {hi}]" in msg and "unet.batch_sizes" in msg
    msg = _err(lambda: runner(x[:1], torch.ones(1), torch.zeros(1, 77, 32)))
    assert "batch 1 is outside" in msg


def test_onnx_whose_external_data_is_missing(demo_engines, tmp_path):
    import onnx

    eng = _copy(demo_engines, tmp_path)
    f = eng / "classifier" / "model.onnx"
    model = onnx.load(str(f))
    onnx.save_model(model, str(f), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=1024)
    (eng / "classifier" / "model.onnx.data").unlink()
    msg = _err(lambda: load(eng).runner("classifier"))
    assert str(f) in msg and "model.onnx.data is missing" in msg and "rv2 build-engines" in msg


def test_generator_folder_without_vae(tmp_path):
    from click.testing import CliRunner

    gen = tmp_path / "gen"
    shutil.copytree(DEMO / "generator", gen)
    shutil.rmtree(gen / "vae")
    r = CliRunner().invoke(main, ["build-engines", "--target", "demo", "--out", str(tmp_path / "e"),
                                  "--generator", str(gen), "--backends", "onnxruntime"])
    assert r.exit_code == 2
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("Error: ") and f"{gen} has no vae/" in line and "diffusers folder" in line


def test_engines_built_from_other_weights_are_refused(demo_engines, tmp_path):
    from .conftest import make_classifier

    other = make_classifier(tmp_path / "other", seed=3)
    msg = _err(lambda: load(demo_engines["out"]).predictor(other))
    assert "other weights" in msg and f"--classifier {other}" in msg


def test_not_an_engines_folder(tmp_path):
    msg = _err(lambda: load(tmp_path))
    assert "engines.json" in msg and "rv2 build-engines" in msg
