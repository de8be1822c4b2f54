"""`rv2 qc calibrate` on phantom radiographs with the bundled demo QC models, the
calibration file, and `rv2 generate` using its age tolerance."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from gen_helpers import STEPS, constant_bundle, prompts_table, tiny
from PIL import Image
from rv2.cli import main
from rv2.data.manifest import write_manifest
from rv2.demo import world
from rv2.generate import qc_calibration as cal
from rv2.generate.config import GenerateConfig
from rv2.models.qc_networks import load_qc_models

DEMO_QC = Path(world.__file__).resolve().parent / "weights" / "qc"
N_CASES = 40


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """A real-format manifest of phantom PNGs (64 px, as the demo QC models were trained on):
    20 subjects x 2 studies, with their true sex, race and age."""
    base = tmp_path_factory.mktemp("phantoms")
    (base / "images").mkdir()
    rows = []
    for i in range(N_CASES):
        case = world.sample_case(7, "mimic", subject=i // 2, study=i % 2)
        case.view = "PA"
        rel = f"images/{case.case_id}.png"
        Image.fromarray(world.render(case, 64), mode="L").save(base / rel)
        rows.append({"image_id": case.case_id, "path": rel, "patient_id": f"p{case.subject}",
                     "study_id": f"s{i}", "dataset": "mimic", "view": "PA", "sex": case.sex,
                     "age": float(case.age), "race": case.group or "Other", "split": "test"})
    path = write_manifest(pd.DataFrame(rows), base / "real.parquet", {"root": str(base)})
    return path


def _calibrate(manifest, out, *extra):
    return CliRunner().invoke(main, ["qc", "calibrate", "--manifest", str(manifest), "--out", str(out),
                                     "--qc-weights-dir", str(DEMO_QC), "--image-size", "64",
                                     "--device", "cpu", "--no-progress", "--set", "n_boot=200",
                                     *extra])


@pytest.fixture(scope="module")
def calibration(phantoms, tmp_path_factory):
    out = tmp_path_factory.mktemp("cal") / "qc_calibration.json"
    res = _calibrate(phantoms, out)
    assert res.exit_code == 0, res.output
    assert "age error SD" in res.output and "--qc-calibration" in res.output
    return out


def test_calibration_measures_the_demo_qc_on_phantoms(phantoms, calibration):
    doc = json.loads(calibration.read_text())
    df = pd.read_parquet(phantoms)
    assert doc["format"] == cal.FORMAT and doc["data"]["images_used"] == N_CASES
    assert doc["bootstrap"]["unit"] == "patient" and doc["bootstrap"]["groups"] == N_CASES // 2
    # n per attribute: every row has sex and age; race is judged for Asian/Black/White only
    assert doc["sex"]["n"] == N_CASES and doc["age"]["n"] == N_CASES
    assert doc["race"]["n"] == int(df.race.isin(["Asian", "Black", "White"]).sum())
    judged_out = {k: int(v) for k, v in df.race[~df.race.isin(["Asian", "Black", "White"])]
                  .value_counts().items()}
    assert doc["race"]["not_judged"] == judged_out
    # an independent recomputation from the QC models' own predictions
    qc = load_qc_models(DEMO_QC)
    x = torch.from_numpy(np.stack([cal.load_square(phantoms.parent / p, 64) for p in df.path]))[:, None]
    pred = qc.predict(x)
    err = pred["age"].astype(float) - df.age.to_numpy()
    assert doc["age"]["sd"] == pytest.approx(np.std(err, ddof=1), rel=1e-5)
    assert doc["age"]["rmse"] == pytest.approx(np.sqrt(np.mean(err ** 2)), rel=1e-5)
    assert doc["age"]["mean_error"] == pytest.approx(err.mean(), abs=1e-4)
    sex_acc = np.mean(np.where(pred["p_female"] >= 0.5, "F", "M") == df.sex.to_numpy())
    assert doc["sex"]["accuracy"] == pytest.approx(sex_acc)
    # the paper's rule: the tolerance is the SD of the age error; finite, with CIs around it
    tol = doc["age_tolerance"]
    assert tol["rule"] == "sd" and tol["years"] == doc["age"]["sd"]
    for key, ci_key in (("rmse", "rmse_ci"), ("sd", "sd_ci"), ("mae", "mae_ci")):
        lo, hi = doc["age"][ci_key]
        assert math.isfinite(doc["age"][key]) and lo <= doc["age"][key] <= hi, key
    lo, hi = doc["sex"]["ci"]
    assert lo <= doc["sex"]["accuracy"] <= hi
    assert doc["sex"]["accuracy"] > 0.8 and doc["age"]["sd"] < 16  # the demo QC reads phantoms
    assert doc["age"]["within_tolerance"]["calibrated"] == pytest.approx(
        np.mean(np.abs(err) <= tol["years"]))
    # the file round-trips, with the rv2 metadata beside it
    assert cal.read_calibration(calibration) == doc
    meta = json.loads(calibration.with_name(calibration.name + ".rv2.json").read_text())
    assert meta["config"]["config_class"] == "QCCalibrationConfig" and meta["inputs"][0]["sha256"]
    assert meta["qc_model"]["model_hash"] == qc.model_hash


def test_rmse_rule_and_image_unit(phantoms, tmp_path):
    df = pd.read_parquet(phantoms).drop(columns=["patient_id"])
    m = phantoms.parent / "no_patients.parquet"
    df.to_parquet(m)
    res = _calibrate(m, tmp_path / "c.json", "--set", "tolerance_rule=rmse", "--root",
                     str(phantoms.parent))
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["bootstrap"]["unit"] == "image" and doc["age_tolerance"]["rule"] == "rmse"
    assert doc["age_tolerance"]["years"] == doc["age"]["rmse"]


def _generate(tmp_path, name, qc, **qc_settings):
    cfg = GenerateConfig.from_dict({"sampler": {"steps": STEPS, "device": "cpu"},
                                    "qc": qc_settings, "max_attempts": 1, "batch_size": 4})
    from rv2.generate.pipeline import generate_dataset

    return generate_dataset(prompts_table(4), None, tmp_path / name, cfg, qc_models=qc,
                            components=tiny(0), progress=False)


def test_generate_uses_the_calibrated_tolerance(calibration, tmp_path):
    doc = cal.read_calibration(calibration)
    qc = load_qc_models(DEMO_QC)
    s = _generate(tmp_path, "cal", qc, calibration=str(calibration))
    tol = s["age_tolerance"]
    assert tol["years"] == doc["age_tolerance"]["years"] and tol["source"] == "calibration"
    assert tol["calibration"] == str(calibration) and "SD of the age model's error" in tol["rule"]
    assert json.loads((tmp_path / "cal" / "summary.json").read_text())["age_tolerance"] == tol
    run = json.loads((tmp_path / "cal" / "run.json").read_text())
    assert run["age_tolerance"] == tol["years"] and run["age_tolerance_source"]["source"] == "calibration"
    log = pd.read_parquet(tmp_path / "cal" / "qc_log.parquet")
    ages = prompts_table(4).set_index("prompt_id").loc[log.prompt_id, "age"].to_numpy()
    np.testing.assert_array_equal(log.qc_age_ok, np.abs(log.qc_age_pred - ages) <= tol["years"])
    meta = json.loads((tmp_path / "cal" / "rv2_meta.json").read_text())
    assert any(i["path"] == str(calibration) for i in meta["inputs"])
    # without a calibration: the authors' 16 years, said so
    s = _generate(tmp_path, "default", qc)
    assert s["age_tolerance"]["years"] == 16.0 and s["age_tolerance"]["source"] == "default"
    run = json.loads((tmp_path / "default" / "run.json").read_text())
    assert run["age_tolerance"] == 16.0 and run["age_tolerance_source"]["source"] == "default"


def test_generate_refuses_a_calibration_of_other_qc_models(calibration, tmp_path):
    other = load_qc_models(constant_bundle(tmp_path / "qc"))
    with pytest.raises(cal.CalibrationError, match="Calibrate these"):
        _generate(tmp_path, "other", other, calibration=str(calibration))
    with pytest.raises(cal.CalibrationError, match="give one"):
        _generate(tmp_path, "both", load_qc_models(DEMO_QC), calibration=str(calibration),
                  age_tolerance=10.0)


def test_generate_cli_bad_calibration_file_is_one_line(tmp_path):
    from rv2.models.sd import save_pipeline

    model = save_pipeline(tiny(0), tmp_path / "m")
    prompts_table(2).to_parquet(tmp_path / "p.parquet")
    (tmp_path / "bad.json").write_text(json.dumps({"format": "something else"}))
    base = ["generate", "--prompts", str(tmp_path / "p.parquet"), "--model", str(model),
            "--out", str(tmp_path / "o"), "--qc-weights-dir", str(DEMO_QC), "--device", "cpu"]
    for f, msg in ((tmp_path / "bad.json", "not a QC calibration"),
                   (tmp_path / "none.json", "QC calibration file not found")):
        r = CliRunner().invoke(main, base + ["--qc-calibration", str(f)])
        assert r.exit_code == 2 and msg in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1


def test_bad_inputs_are_one_line_user_errors(phantoms, tmp_path):
    df = pd.read_parquet(phantoms)
    df.drop(columns=["race"]).to_parquet(phantoms.parent / "norace.parquet")
    r = _calibrate(phantoms.parent / "norace.parquet", tmp_path / "a.json")
    assert r.exit_code == 2 and "missing column(s) ['race']" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1

    bad = df.copy()
    (phantoms.parent / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    bad.loc[3, "path"] = "images/broken.png"
    bad.loc[5, "path"] = "images/missing.png"
    bad.to_parquet(phantoms.parent / "bad.parquet")
    r = _calibrate(phantoms.parent / "bad.parquet", tmp_path / "b.json")
    assert r.exit_code == 2 and "cannot read image images/broken.png" in r.output, r.output
    assert "on_bad_image=skip" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "b.json").exists()
    r = _calibrate(phantoms.parent / "bad.parquet", tmp_path / "b.json", "--set", "on_bad_image=skip")
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "b.json").read_text())
    assert doc["data"]["images_used"] == N_CASES - 2 and doc["age"]["n"] == N_CASES - 2
    assert {s["path"] for s in doc["data"]["skipped"]} == {"images/broken.png", "images/missing.png"}

    r = _calibrate(tmp_path / "nope.parquet", tmp_path / "c.json")
    assert r.exit_code == 2 and "manifest not found" in r.output
    r = _calibrate(phantoms, tmp_path / "d.json", "--split", "train")
    assert r.exit_code == 2 and "0 row(s) to calibrate on in split 'train'" in r.output


def test_calibration_reads_the_real_qc_file_formats(phantoms, tmp_path):
    """The published formats (DataParallel race state dict, Lightning sex checkpoint,
    TorchScript age model; random weights here) calibrate like a bundle."""
    from test_qc_models import _real_files

    weights = tmp_path / "weights"
    weights.mkdir()
    _real_files(weights)
    out = tmp_path / "real_files.json"
    r = CliRunner().invoke(main, ["qc", "calibrate", "--manifest", str(phantoms), "--out", str(out),
                                  "--qc-weights-dir", str(weights), "--image-size", "64", "--limit", "8",
                                  "--device", "cpu", "--no-progress", "--set", "n_boot=50"])
    assert r.exit_code == 0, r.output
    doc = cal.read_calibration(out)
    qc = load_qc_models(weights)
    assert doc["qc_model"] == {"model_id": qc.model_id, "model_hash": qc.model_hash,
                               "convention": "authors"}
    assert doc["data"]["images_used"] == 8 and doc["age"]["n"] == 8
    assert math.isfinite(doc["age"]["sd"]) and math.isfinite(doc["age"]["rmse"])
    assert 0 <= doc["sex"]["accuracy"] <= 1 and doc["age_tolerance"]["years"] == doc["age"]["sd"]
