"""`rv2 demo --size small` end to end: every stage's artifact, finite metrics, QC bookkeeping."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from rv2.cli import main as cli_main
from rv2.demo.demo_report import qc_counts_consistent
from rv2.demo.pipeline import WEIGHTS_DIR, DemoError, bundled_weights, demo_config


def test_missing_weights_error_names_the_files_and_the_fix(tmp_path):
    with pytest.raises(DemoError) as exc:
        bundled_weights(tmp_path)
    msg = str(exc.value)
    assert "model_index.json" in msg and "qc_bundle.json" in msg
    assert "tools/train_demo_models.py" in msg


def test_sizes_and_overrides():
    small, full = demo_config("small"), demo_config("full", seed=3)
    assert full.seed == 3 and full.mimic_subjects > small.mimic_subjects
    assert set(full.strategies) == {"real", "synthetic", "mixed", "pretrain-finetune"}
    assert demo_config("small", overrides=["n_generate=8"]).n_generate == 8
    with pytest.raises(ValueError, match="--size"):
        demo_config("huge")


def test_qc_counts_check():
    good = {"prompts_seen": 5, "accepted": 4, "failed": 1,
            "attempts_histogram": {"1": 3, "2": 1, "failed": 1}}
    assert qc_counts_consistent(good)
    assert not qc_counts_consistent({**good, "accepted": 5})
    assert not qc_counts_consistent({})


def test_bundled_weights_have_configs_and_a_training_record():
    if not (WEIGHTS_DIR / "record.json").is_file():
        pytest.skip("bundled demo weights not built (python tools/train_demo_models.py)")
    w = bundled_weights()
    total = sum(p.stat().st_size for p in WEIGHTS_DIR.rglob("*") if p.is_file())
    assert total <= 20 * 2**20, f"bundled weights {total / 2**20:.1f} MB > 20 MB"
    for comp in ("unet", "vae", "text_encoder"):
        assert (w["generator"] / comp / "config.json").is_file()
    assert (w["generator"] / "config.yaml").is_file()  # train-generator's config
    rec = json.loads(w["record"].read_text())
    assert rec["stages"]["generator"]["wall_s"] > 0
    ev = rec["stages"]["eval"]["metrics"]
    for attr in ("sex", "race", "age"):
        # the generator follows its prompts: well above what shuffled requests give
        assert ev["qc_pass_rate"][attr] > ev["chance_pass_rate_shuffled_requests"][attr] + 0.15, attr


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    if not (WEIGHTS_DIR / "generator" / "model_index.json").is_file():
        pytest.skip("bundled demo weights not built (python tools/train_demo_models.py)")
    from rv2.demo.pipeline import run_demo

    out = tmp_path_factory.mktemp("demo")
    report = run_demo(out, demo_config("small", seed=0), cli_main, quiet=True)
    return out, report


def test_every_stage_artifact_exists_with_its_config(demo_run):
    out, report = demo_run
    cfg = demo_config("small")
    assert report == out / "report.md" and report.is_file()
    assert (out / "report.html").is_file() and (out / "report.json").is_file()
    expected_meta = [
        out / "world" / "mimic-cxr-jpg" / "rv2_meta.json",
        out / "world" / "chexpert" / "rv2_meta.json", out / "world" / "nih" / "rv2_meta.json",
        out / "data" / "nih.parquet.rv2.json",
        out / "data" / "mimic.parquet.rv2.json", out / "data" / "chexpert.parquet.rv2.json",
        out / "data" / "test.parquet.rv2.json",
        out / "prompts" / "prompts.parquet.rv2.json", out / "prompts" / "expanded.parquet.rv2.json",
        out / "synthetic" / "rv2_meta.json",
        out / "report.md.rv2.json",
    ]
    expected_meta += [out / "models" / s / "rv2_meta.json" for s in cfg.strategies]
    expected_meta += [out / "reports" / s / "report.json" for s in cfg.strategies]
    expected_meta += [out / "reports" / "compare" / "report.json"]
    for p in expected_meta:
        assert p.is_file(), p
    for p in expected_meta:
        if p.name.endswith("rv2.json") or p.name == "rv2_meta.json":
            assert "config" in json.loads(p.read_text()), p
    for s in cfg.strategies:
        assert (out / "predictions" / f"{s}.parquet").is_file()
        assert (out / "models" / s / "thresholds.json").is_file()
    cmds = (out / "commands.sh").read_text()
    for c in ("rv2 data index", "rv2 prompts build", "rv2 prompts expand", "rv2 generate",
              "rv2 train-classifier", "rv2 predict", "rv2 evaluate", "rv2 compare"):
        assert c in cmds, c


def test_metrics_finite_and_aurocs_above_chance_on_both_sites(demo_run):
    out, _ = demo_run
    rep = json.loads((out / "reports" / "compare" / "report.json").read_text())
    assert set(rep["test_sets"]) == {"mimic", "chexpert", "nih"}
    for set_name, ts in rep["test_sets"].items():
        for model, res in ts["models"].items():
            auc = res["macro"]["auroc"]
            assert _finite(auc["estimate"]) and _finite(auc["low"]) and _finite(auc["high"])
            assert auc["estimate"] > 0.5, (set_name, model, auc)
            assert _finite(res["macro"]["ap"]["estimate"])
        for comp in ts["comparisons"].values():
            assert _finite(comp["macro"]["auroc"]["diff"]["estimate"])


def test_qc_summary_counts_add_up(demo_run):
    out, _ = demo_run
    cfg = demo_config("small")
    s = json.loads((out / "synthetic" / "summary.json").read_text())
    assert s["prompts_seen"] == cfg.n_generate
    assert qc_counts_consistent(s)
    man = pd.read_parquet(out / "synthetic" / "manifest.parquet")
    assert len(man) == s["accepted"] > 0
    assert s["attempts_total"] >= s["prompts_seen"]
    assert sum(s["failed_by_attribute"].values()) >= min(1, s["failed"])


@pytest.mark.slow
def test_same_seed_same_results(tmp_path, demo_run):
    """A second small run with the same seed reproduces the first one's numbers."""
    from rv2.demo.pipeline import run_demo

    out1, _ = demo_run
    out2 = tmp_path / "again"
    run_demo(out2, demo_config("small", seed=0), cli_main, quiet=True)
    a = json.loads((out1 / "synthetic" / "summary.json").read_text())
    b = json.loads((out2 / "synthetic" / "summary.json").read_text())
    for k in ("accepted", "failed", "failed_by_attribute", "attempts_histogram"):
        assert a[k] == b[k], k
    ra = json.loads((out1 / "reports" / "compare" / "report.json").read_text())
    rb = json.loads((out2 / "reports" / "compare" / "report.json").read_text())
    for s, ts in ra["test_sets"].items():
        for m, res in ts["models"].items():
            assert res["macro"]["auroc"]["estimate"] == pytest.approx(
                rb["test_sets"][s]["models"][m]["macro"]["auroc"]["estimate"], abs=1e-6)


def test_refuses_to_mix_runs_with_other_settings(tmp_path):
    from rv2.demo.pipeline import run_demo

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "unrelated.txt").write_text("keep me")
    with pytest.raises(DemoError, match="not a demo run folder"):
        run_demo(tmp_path / "x", demo_config("small"), cli_main)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    demo_config("small", seed=1).save(run_dir / "demo_config.yaml")
    with pytest.raises(DemoError, match="other settings"):
        run_demo(run_dir, demo_config("small", seed=2), cli_main)
