"""`rv2 eval-generator` on the demo world: the table end to end, caching and resume,
skipped metrics, checkpoint discovery, the selection rule; and (slow) a degraded
generator scoring worse than the bundled one."""
from __future__ import annotations

import json
import math
import shutil

import pandas as pd
import pytest
from click.testing import CliRunner
from rv2.cli import main
from rv2.demo.pipeline import WEIGHTS_DIR
from rv2.evaluate import generator_eval as ge
from rv2.evaluate.generator_eval import (
    EvalGeneratorConfig,
    EvalGeneratorError,
    discover_checkpoints,
    select_checkpoint,
)

GEN, QC, EVAL = WEIGHTS_DIR / "generator", WEIGHTS_DIR / "qc", WEIGHTS_DIR / "eval"
needs_bundle = pytest.mark.skipif(not (EVAL / "eval_bundle.json").is_file() or
                                  not (GEN / "model_index.json").is_file(),
                                  reason="demo weights not built (tools/train_demo_models.py, "
                                         "tools/build_demo_eval_nets.py)")
# 64 px demo images: two MS-SSIM scales with a 7-pixel window
SMALL = ["--set", "msssim_weights=[0.4,0.6]", "--set", "msssim_win=7", "--set", "n_boot=100"]


@pytest.fixture(autouse=True)
def _no_user_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RV2_WEIGHTS_DIR", raising=False)


@pytest.fixture(scope="module")
def val_set(tmp_path_factory):
    from rv2.demo.eval_data import write_validation_set

    return write_validation_set(tmp_path_factory.mktemp("val"), n=8)


def _run(args, ok=True):
    res = CliRunner().invoke(main, ["eval-generator", *map(str, args)], catch_exceptions=False)
    if ok:
        assert res.exit_code == 0, res.output
    return res


def _pngs(folder):
    return sorted(p for p in folder.rglob("*.png"))


# ------------------------------------------------------------------ selection rule

PAPER = {  # Supplementary Table 1: average AUROC, FID
    "5k": (0.79, 77.2), "7.5k": (0.81, 81.9), "10k": (0.81, 76.8), "12.5k": (0.80, 86.4),
    "15k": (0.80, 87.4), "20k": (0.76, 103.5), "30k": (0.75, 101.3), "40k": (0.75, 99.2),
    "50k": (0.76, 97.9), "60k": (0.77, 90.9)}


def _rows(table):
    return [{"checkpoint": "real", "step": None, "auroc_avg": 0.88, "fid": 0.0}] + [
        {"checkpoint": k, "step": i, "auroc_avg": a, "fid": f} for i, (k, (a, f)) in enumerate(table.items())]


def test_selection_rule_picks_the_papers_checkpoint():
    for rule in ("auroc_then_fid", "fid", "auroc"):
        assert select_checkpoint(_rows(PAPER), rule)["checkpoint"] == "10k", rule
    # a looser tolerance lets 5k in (AUROC 0.79), but its FID is not lower than 10k's
    assert select_checkpoint(_rows(PAPER), tolerance=0.02)["checkpoint"] == "10k"
    wider = dict(PAPER, **{"5k": (0.79, 70.0)})
    assert select_checkpoint(_rows(wider), tolerance=0.02)["checkpoint"] == "5k"
    assert select_checkpoint(_rows(wider), tolerance=0.0)["checkpoint"] == "10k"
    no_fid = [dict(r, fid=None) for r in _rows(PAPER)]
    s = select_checkpoint(no_fid)
    assert s["checkpoint"] in ("7.5k", "10k") and "FID not computed" in s["reason"]
    with pytest.raises(EvalGeneratorError, match="neither"):
        select_checkpoint([dict(r, fid=None, auroc_avg=None) for r in _rows(PAPER)])


# ------------------------------------------------------------------ checkpoints

def _fake_diffusers(path, steps=None):
    path.mkdir(parents=True)
    (path / "model_index.json").write_text("{}")
    if steps is not None:
        (path / "training_summary.json").write_text(json.dumps({"steps": steps}))
    return path


def test_discover_checkpoints(tmp_path):
    series = tmp_path / "series"
    _fake_diffusers(series / "ckpt-7500")
    _fake_diffusers(series / "final", steps=10000)
    _fake_diffusers(series / "ckpt-500")
    cks = discover_checkpoints(checkpoints=series)
    assert [(c.name, c.step) for c in cks] == [("ckpt-500", 500), ("ckpt-7500", 7500),
                                               ("final", 10000)]
    # a train-generator run: accelerate states + the run's pipeline/
    run = tmp_path / "run"
    for s in (1000, 200):
        (run / "checkpoints" / f"step-{s:08d}").mkdir(parents=True)
        (run / "checkpoints" / f"step-{s:08d}" / "model.safetensors").write_bytes(b"x")
    (run / "checkpoints" / ".tmp-step-00001200").mkdir()  # an unfinished save is ignored
    with pytest.raises(EvalGeneratorError, match="--base"):
        discover_checkpoints(checkpoints=run)
    _fake_diffusers(run / "pipeline")
    for root in (run, run / "checkpoints"):
        cks = discover_checkpoints(checkpoints=root)
        assert [(c.step, c.kind, c.base) for c in cks] == [(200, "accelerate", run / "pipeline"),
                                                          (1000, "accelerate", run / "pipeline")]
    with pytest.raises(EvalGeneratorError, match="not a diffusers generator"):
        discover_checkpoints(generators=[run])
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvalGeneratorError, match="no generator folders"):
        discover_checkpoints(checkpoints=tmp_path / "empty")
    with pytest.raises(EvalGeneratorError, match="nothing to evaluate"):
        discover_checkpoints()
    # one name twice: told apart by the parent folder
    a, b = _fake_diffusers(tmp_path / "a" / "gen"), _fake_diffusers(tmp_path / "b" / "gen")
    assert sorted(c.name for c in discover_checkpoints(generators=[a, b])) == ["a-gen", "b-gen"]


@needs_bundle
def test_training_state_loads_into_the_pipeline(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    run.mkdir()
    (run / "pipeline").symlink_to(GEN)
    # the UNet + text encoder state as train-generator's accelerate checkpoint holds it
    unet = {k: v + 0.01 for k, v in load_file(str(GEN / "unet" / "diffusion_pytorch_model.safetensors")).items()}
    text = load_file(str(GEN / "text_encoder" / "model.safetensors"))
    (run / "checkpoints" / "step-00000300").mkdir(parents=True)
    save_file({**{f"unet.{k}": v for k, v in unet.items()},
               **{f"text_encoder.{k}": v for k, v in text.items()}},
              str(run / "checkpoints" / "step-00000300" / "model.safetensors"))
    (ck,) = discover_checkpoints(checkpoints=run)
    assert (ck.step, ck.kind) == (300, "accelerate")
    loaded = ge.load_checkpoint(ck)
    for k, v in loaded.unet.state_dict().items():
        assert torch.equal(v, unet[k]), k
    assert ge.fingerprint(ck) != ge.fingerprint(discover_checkpoints(generators=[GEN])[0])
    bad = run / "checkpoints" / "step-00000400"
    bad.mkdir()
    save_file({"unet.conv_in.weight": torch.zeros(1)}, str(bad / "model.safetensors"))
    with pytest.raises(EvalGeneratorError, match=r"no text_encoder\.\* weights"):
        ge.load_checkpoint(discover_checkpoints(checkpoints=run)[1])
    save_file({"unet.conv_in.weight": torch.zeros(1), **{f"text_encoder.{k}": v for k, v in text.items()}},
              str(bad / "model.safetensors"))
    with pytest.raises(EvalGeneratorError, match="unet weights do not fit") as exc:
        ge.load_checkpoint(discover_checkpoints(checkpoints=run)[1])
    assert len(str(exc.value)) < 600


# ------------------------------------------------------------------ end to end (demo world)

@needs_bundle
def test_table_end_to_end_cached_and_resumed(val_set, tmp_path, monkeypatch):
    out = tmp_path / "ev"
    base = ["--prompts", val_set, "--out", out, "--generator", GEN, "--eval-bundle", EVAL,
            "--qc-weights-dir", QC, "--steps", 3, "--guidance", 3, "--n-seeds", 2,
            "--device", "cpu", "--no-progress", *SMALL]
    # a crash after 5 images: the rerun generates only the rest
    real_write = ge.atomic_write_bytes
    written = []

    def crashing_write(path, data):
        if str(path).endswith(".png"):
            if len(written) == 5:
                raise RuntimeError("simulated crash")
            written.append(path)
        real_write(path, data)

    monkeypatch.setattr(ge, "atomic_write_bytes", crashing_write)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(base + ["--metrics", "msssim_real,fid"], ok=False)
    monkeypatch.setattr(ge, "atomic_write_bytes", real_write)
    assert len(_pngs(out / "images")) == 5

    res = _run(base + ["--metrics", "msssim_real,fid"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["generation"]["generator"]["images"] == 8 * 2 - 5
    pngs = _pngs(out / "images")
    assert len(pngs) == 16
    stamps = {p: p.stat().st_mtime_ns for p in pngs}
    t = pd.read_csv(out / "table.csv")
    assert list(t["checkpoint"]) == ["real", "generator"]
    assert math.isnan(t.loc[1, "auroc_avg"]) and t.loc[1, "fid"] > 0 and 0 < t.loc[1, "msssim_real"] < 1

    # every metric now: nothing is regenerated, the new columns are filled
    res = _run(base)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["generation"] == {} and summary["skipped"] == {}
    assert {p: p.stat().st_mtime_ns for p in _pngs(out / "images")} == stamps
    t = pd.read_csv(out / "table.csv").set_index("checkpoint")
    g, r = t.loc["generator"], t.loc["real"]
    for col in ("auroc_avg", "sex_acc", "race_acc", "age_rmse", "fid", "fid_xrv", "msssim_real",
                "biovil_real", "msssim_div", "biovil_div", "msssim_div_low", "msssim_div_high"):
        assert math.isfinite(g[col]), col
    assert r["fid"] == pytest.approx(0.0, abs=1e-6) and r["msssim_real"] == pytest.approx(1.0)
    assert r["biovil_real"] == pytest.approx(1.0) and math.isnan(r["msssim_div"])
    assert 0 <= g["sex_acc"] <= 1 and g["msssim_div_low"] <= g["msssim_div"] <= g["msssim_div_high"]
    md = (out / "table.md").read_text()
    assert "| real data |" in md and "**generator (1200)**" in md and "Selected: **generator**" in md
    assert "| real data |" in res.output
    assert (out / "table.png").stat().st_size > 1000
    assert json.loads((out / "selection.json").read_text())["checkpoint"] == "generator"
    # the metrics are cached: a rerun recomputes none of them
    before = (out / "metrics" / "generator.json").read_text()
    _run(base)
    assert (out / "metrics" / "generator.json").read_text() == before

    # fewer prompts: the cached images serve, the metrics follow the new prompt set
    _run(base + ["--limit", 6])
    s6 = json.loads((out / "summary.json").read_text())
    m6 = json.loads((out / "metrics" / "generator.json").read_text())
    assert s6["generation"] == {} and s6["prompts"] == 6
    assert m6["fid"]["n_real"] == 6 and m6["fid"]["n_synthetic"] == 12
    assert len(m6["msssim_div"]["per_prompt"]) == 6

    # other sampling settings on the same folder: refused, not mixed
    res = _run([a if a != 3 else 4 for a in base], ok=False)
    assert res.exit_code == 2 and "another" in res.output and "sampling" in res.output


@needs_bundle
def test_missing_weights_skip_their_metrics_and_the_rest_runs(val_set, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(EVAL, bundle)
    (bundle / "biovil.safetensors").unlink()
    out = tmp_path / "ev"
    common = ["--prompts", val_set, "--generator", GEN, "--qc-weights-dir", QC, "--steps", 2,
              "--n-seeds", 2, "--device", "cpu", "--no-progress", *SMALL]
    res = _run(common + ["--out", out, "--eval-bundle", bundle])
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["skipped"]) == {"biovil_real", "biovil_div"}
    why = summary["skipped"]["biovil_real"]
    assert "biovil.safetensors" in why and str(bundle) in why and "BioViL" in why
    assert "skipped biovil_real:" in res.output
    t = pd.read_csv(out / "table.csv").set_index("checkpoint")
    assert math.isnan(t.loc["generator", "biovil_real"])
    assert math.isfinite(t.loc["generator", "fid"]) and math.isfinite(t.loc["generator", "auroc_avg"])
    assert "Skipped:" in (out / "table.md").read_text()

    # no bundle and no real files: Inception, torchxrayvision and BioViL metrics are
    # skipped with the file and folders named; MS-SSIM and the QC metrics still run
    empty = tmp_path / "weights"
    empty.mkdir()
    _run(common + ["--out", out, "--weights-dir", empty])
    s2 = json.loads((out / "summary.json").read_text())
    assert s2["generation"] == {}  # same folder, same settings: the images are reused
    assert set(s2["skipped"]) == {"alignment", "fid", "fid_xrv", "biovil_real", "biovil_div"}
    assert "pt_inception-2015-12-05-6726825d.pth" in s2["skipped"]["fid"]
    assert str(empty) in s2["skipped"]["fid"] and "FID" in s2["skipped"]["fid"]
    t2 = pd.read_csv(out / "table.csv").set_index("checkpoint")
    for col in ("msssim_real", "msssim_div", "sex_acc", "age_rmse"):
        assert math.isfinite(t2.loc["generator", col]), col
    assert s2["selection"]["checkpoint"] is None and "neither" in s2["selection"]["reason"]


def test_bad_inputs_name_the_input(tmp_path, val_set):
    res = _run(["--prompts", tmp_path / "nope.parquet", "--out", tmp_path / "o",
                "--generator", GEN], ok=False)
    assert res.exit_code == 2 and "nope.parquet" in res.output
    pd.DataFrame({"prompt": ["x"]}).to_parquet(tmp_path / "p.parquet")
    res = _run(["--prompts", tmp_path / "p.parquet", "--out", tmp_path / "o", "--generator", GEN],
               ok=False)
    assert "missing column(s)" in res.output and "path" in res.output
    res = _run(["--prompts", val_set, "--out", tmp_path / "o", "--generator", GEN,
                "--metrics", "fid,nonsense"], ok=False)
    assert "nonsense" in res.output
    with pytest.raises(EvalGeneratorError, match="split"):
        ge.load_validation(val_set, None, EvalGeneratorConfig(split="test"))


# ------------------------------------------------------------------ degraded generator

@pytest.mark.slow
@needs_bundle
def test_degraded_generator_scores_worse(tmp_path):
    import torch
    from rv2.demo.eval_data import write_validation_set
    from rv2.models.sd import load_components, save_pipeline

    comps = load_components(GEN)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # noise of half each tensor's spread on every UNet weight
        for p in comps.unet.parameters():
            p.add_(0.5 * p.std().nan_to_num(0) * torch.randn(p.shape, generator=g))
    noisy = save_pipeline(comps, tmp_path / "noisy")
    val = write_validation_set(tmp_path / "val", n=32)
    out = tmp_path / "ev"
    _run(["--prompts", val, "--out", out, "--generator", GEN, "--generator", noisy,
          "--eval-bundle", EVAL, "--qc-weights-dir", QC, "--steps", 10, "--guidance", 3,
          "--n-seeds", 2, "--device", "cpu", "--no-progress", *SMALL])
    t = pd.read_csv(out / "table.csv").set_index("checkpoint")
    good, bad = t.loc["generator"], t.loc["noisy"]
    assert bad["fid"] > 2 * good["fid"]
    assert bad["fid_xrv"] > 2 * good["fid_xrv"]
    assert bad["auroc_avg"] < good["auroc_avg"] - 0.1
    assert bad["sex_acc"] < good["sex_acc"] and bad["race_acc"] < good["race_acc"]
    assert json.loads((out / "selection.json").read_text())["checkpoint"] == "generator"
