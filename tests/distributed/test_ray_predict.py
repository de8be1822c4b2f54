"""`rv2 predict --executor ray`: the same predictions as the single-process run."""
from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image
from rv2.cli import main
from rv2.data.schema import CHEXPERT_LABELS, age_bin


def classifier(folder):
    """A real classifier folder (seeded, untrained DenseNet-121 at 32 px)."""
    import torch
    from rv2.classify import model_dir as md
    from rv2.models.densenet import densenet121, model_config

    torch.manual_seed(0)
    folder.mkdir()
    md.save_weights(densenet121(len(CHEXPERT_LABELS)), folder / md.WEIGHTS)
    (folder / md.MODEL_CONFIG).write_text(json.dumps(model_config(CHEXPERT_LABELS, 32, 0.5, 0.25)))
    (folder / md.THRESHOLDS).write_text(json.dumps(
        {"labels": list(CHEXPERT_LABELS), "thresholds": [0.5] * len(CHEXPERT_LABELS), "rule": ">="}))
    return folder


def manifest(folder, n):
    rng = np.random.default_rng(7)
    (folder / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        rel = f"images/x{i:03d}.png"
        if i == 5:
            (folder / rel).write_bytes(b"\x89PNG truncated")     # unreadable: reported, not dropped
        else:
            Image.fromarray(rng.integers(0, 255, (36, 40), dtype=np.uint8)).save(folder / rel)
        rows.append({"image_id": f"x{i:03d}", "path": rel, "patient_id": f"p{i}", "study_id": f"s{i}",
                     "dataset": "test", "view": "PA", "sex": "F", "age": 50.0, "age_bin": age_bin(50),
                     "race": "White", "split": "test", **{lab: 0.0 for lab in CHEXPERT_LABELS}})
    pd.DataFrame(rows).to_parquet(folder / "manifest.parquet", index=False)
    return folder / "manifest.parquet"


@pytest.mark.ray
def test_ray_predict_equals_single_process(tmp_path, ray_cluster):
    import torch
    from rv2.classify.inference import predict
    from rv2.distributed.predict import RayPredictExecutor

    model, man = classifier(tmp_path / "clf"), manifest(tmp_path / "data", 37)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = predict(model, man, batch_size=4, device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)
    got = RayPredictExecutor(address=ray_cluster, workers=3, chunk_batches=2).predict(
        model, man, batch_size=4, progress=False)      # 5 chunks of 8 rows over 3 actors
    pd.testing.assert_frame_equal(got, ref, check_exact=True)
    assert got.attrs["skipped"]["image_id"].tolist() == ["x005"] == ref.attrs["skipped"]["image_id"].tolist()
    assert got.attrs["n_input"] == 37
    assert sum(w["items"] for w in got.attrs["workers"]) == 37

    r = CliRunner().invoke(main, ["predict", "--model", str(model), "--manifest", str(man), "--out",
                                  str(tmp_path / "p.parquet"), "--batch-size", "4", "--executor", "ray",
                                  "--address", ray_cluster, "--workers", "1"])
    assert r.exit_code == 0, r.output
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "p.parquet"), ref, check_exact=True)


def test_executor_ray_without_ray_says_to_install_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)     # import ray -> ImportError
    r = CliRunner().invoke(main, ["generate", "--prompts", "p.parquet", "--model", "m", "--out", "o",
                                  "--executor", "ray"])
    assert r.exit_code == 2
    assert "pip install 'rv2[ray]'" in r.output and len(r.output.strip().splitlines()) == 1


def test_ray_options_need_the_ray_executor():
    r = CliRunner().invoke(main, ["generate", "--prompts", "p.parquet", "--model", "m", "--out", "o",
                                  "--address", "auto"])
    assert r.exit_code == 2 and "--address applies to --executor ray only" in r.output
