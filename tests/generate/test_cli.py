"""`rv2 generate` command line: clear errors, and a tiny end-to-end run."""
from __future__ import annotations

import json

import pandas as pd
from click.testing import CliRunner
from gen_helpers import constant_bundle, prompts_table, tiny
from rv2.cli import main


def test_missing_qc_weights_and_model_are_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RV2_WEIGHTS_DIR", raising=False)
    prompts_table(2).to_parquet(tmp_path / "p.parquet")
    r = CliRunner().invoke(main, ["generate", "--prompts", str(tmp_path / "p.parquet"), "--model",
                                  str(tmp_path / "nomodel"), "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "model folder not found" in r.output
    from rv2.models.sd import save_pipeline

    model = save_pipeline(tiny(0), tmp_path / "m")
    qdir = tmp_path / "qcw"
    qdir.mkdir()
    r = CliRunner().invoke(main, ["generate", "--prompts", str(tmp_path / "p.parquet"), "--model",
                                  str(model), "--out", str(tmp_path / "o"), "--qc-weights-dir", str(qdir)])
    assert r.exit_code != 0
    assert "resnet_race_detection_val-loss_0.157_mimic_public.pt" in r.output
    assert "sex_model_chexpert_resnet_all.ckpt" in r.output
    assert str(qdir) in r.output and ".torchxrayvision/models_data" in r.output
    r = CliRunner().invoke(main, ["generate", "--prompts", str(tmp_path / "missing.parquet"),
                                  "--model", str(model), "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "prompts table not found" in r.output
    r = CliRunner().invoke(main, ["generate", "--prompts", str(tmp_path / "p.parquet"), "--model",
                                  str(model), "--out", str(tmp_path / "o"), "--set", "sampler.stepz=3"])
    assert r.exit_code != 0 and "unknown field" in r.output


def test_cli_run_with_bundle_and_config(tmp_path):
    from rv2.models.sd import save_pipeline

    model = save_pipeline(tiny(0), tmp_path / "m")
    bundle = constant_bundle(tmp_path / "qc", age=60.0)
    df = prompts_table(4)
    df.to_parquet(tmp_path / "p.parquet")
    (tmp_path / "gen.yaml").write_text("sampler:\n  steps: 2\n  guidance: 3.0\nstore:\n  shard_size: 2\n")
    r = CliRunner().invoke(main, ["generate", "--prompts", str(tmp_path / "p.parquet"), "--model",
                                  str(model), "--out", str(tmp_path / "o"), "--qc-weights-dir",
                                  str(bundle), "--config", str(tmp_path / "gen.yaml"),
                                  "--max-attempts", "1", "--device", "cpu", "--no-progress"])
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "o" / "rv2_meta.json").read_text())
    assert meta["config"]["sampler"]["steps"] == 2 and meta["config"]["sampler"]["guidance"] == 3.0
    assert meta["config"]["max_attempts"] == 1
    log = pd.read_parquet(tmp_path / "o" / "qc_log.parquet")
    assert len(log) == 4 and (log["qc_p_female"] > 0.99).all() and (log["qc_age_pred"] - 60).abs().max() < 1e-3
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["failed"] + summary["accepted"] == 4


def test_sampler_choice_unknown_names_and_resume_guard(tmp_path):
    from rv2.models.sd import save_pipeline

    model = save_pipeline(tiny(0), tmp_path / "m")
    bundle = constant_bundle(tmp_path / "qc", age=60.0)
    prompts_table(3).to_parquet(tmp_path / "p.parquet")
    base = ["generate", "--prompts", str(tmp_path / "p.parquet"), "--model", str(model),
            "--qc-weights-dir", str(bundle), "--steps", "2", "--max-attempts", "1",
            "--device", "cpu", "--no-progress"]
    r = CliRunner().invoke(main, base + ["--out", str(tmp_path / "x"), "--sampler", "plms"])
    assert r.exit_code == 2 and "'plms' is not one of" in r.output and "dpmpp2m" in r.output
    r = CliRunner().invoke(main, base + ["--out", str(tmp_path / "x"), "--set", 'sampler.name="plms"'])
    assert r.exit_code != 0 and "unknown sampler 'plms'; use one of pndm, ddim" in r.output
    r = CliRunner().invoke(main, base + ["--out", str(tmp_path / "x"), "--early-reject", "a,b"])
    assert r.exit_code != 0 and "--early-reject 'a,b': give fractions" in r.output
    r = CliRunner().invoke(main, base + ["--out", str(tmp_path / "d"), "--sampler", "dpmpp2m",
                                         "--executor", "python"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "d" / "rv2_meta.json").read_text())["config"]["sampler"]["name"] == "dpmpp2m"
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["attempts"]["denoiser_calls"] == 3 * 2   # DPM-Solver: one call per step
    # a store made with one sampler is not resumed with another
    r = CliRunner().invoke(main, base + ["--out", str(tmp_path / "d"), "--sampler", "pndm"])
    assert r.exit_code != 0 and "sampler: store has 'dpmpp2m'" in r.output
    # unipc has no per-slot version: the default executor becomes inprocess
    r = CliRunner().invoke(main, base + ["--out", str(tmp_path / "u"), "--sampler", "unipc"])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "u" / "summary.json").read_text())
    assert summary["executor"] == "inprocess" and summary["attempts"]["attempts"] == 3


def test_cuda_options_are_refused_where_they_cannot_apply(tmp_path):
    """--cuda-streams / --cuda-graph / --speculate: one line naming what they need, before
    any image."""
    from rv2.models.sd import save_pipeline

    model = save_pipeline(tiny(0), tmp_path / "m")
    prompts_table(2).to_parquet(tmp_path / "p.parquet")
    base = ["generate", "--prompts", str(tmp_path / "p.parquet"), "--model", str(model), "--no-qc",
            "--steps", "1", "--device", "cpu", "--no-progress"]
    cases = [(["--executor", "python", "--cuda-streams"], "cuda_streams needs the denoiser on a CUDA device"),
             (["--executor", "python", "--cuda-graph"], "cuda_graph needs the denoiser on a CUDA device"),
             (["--executor", "inprocess", "--cuda-graph"], "options of the pipeline executors"),
             (["--executor", "inprocess", "--speculate"], "options of the pipeline executors"),
             (["--executor", "ray", "--cuda-streams"], "not of Ray's workers"),
             (["--executor", "ray", "--speculate"], "not of Ray's workers")]
    for i, (extra, msg) in enumerate(cases):
        out = tmp_path / f"o{i}"
        r = CliRunner().invoke(main, [*base, "--out", str(out), *extra])
        assert r.exit_code != 0 and msg in r.output, (extra, r.output)
        assert "Traceback" not in r.output
        assert not list(out.glob("images/**/*.png"))
