"""Training that learns, resumes exactly, and runs every strategy end to end."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from rv2 import cli
from rv2.classify import ClassifierConfig, best_f1_thresholds, predict, train_classifier
from rv2.classify.train import TrainingStateError
from rv2.data.schema import CHEXPERT_LABELS
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score

from .conftest import make_manifest


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """A short CPU training on images whose labels are visible."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the function-level one in conftest
    base = tmp_path_factory.mktemp("learn")
    real = make_manifest(base / "real", 160, seed=11, prefix="r")
    val = make_manifest(base / "val", 64, seed=12, prefix="v", split="val", uncertain_rate=0, unknown_rate=0)
    cfg = ClassifierConfig(strategy="real", real=str(real), val=str(val), out=str(base / "model"),
                           image_size=32, init="scratch", epochs=5, batch_size=16, lr=1e-3,
                           num_workers=0, cache_images=True, progress=False)
    try:
        return train_classifier(cfg), val
    finally:
        torch.set_num_threads(threads)


def test_short_training_learns_visible_labels(learned):
    out, _ = learned
    meta = json.loads((out / "rv2_meta.json").read_text())
    s = meta["summary"]
    assert s["n_auroc_labels"] == 14
    assert s["val_auroc_mean"] > 0.9, s
    hist = pd.read_csv(out / "history.csv")
    assert len(hist) == s["epochs_run"] == 5
    assert hist.val_auroc_mean.max() == pytest.approx(s["val_auroc_mean"], abs=1e-6)  # best kept
    assert hist.train_loss.iloc[-1] < hist.train_loss.iloc[0]
    for f in ("model.safetensors", "thresholds.json", "model_config.json", "normalization.json",
              "config.json", "rv2_meta.json"):
        assert (out / f).is_file(), f
    assert not (out / "state").exists()
    mcfg = json.loads((out / "model_config.json").read_text())
    assert mcfg["labels"] == list(CHEXPERT_LABELS) and mcfg["image_size"] == 32
    assert 0.2 < mcfg["normalization"]["mean"] < 0.6
    assert meta["inputs"][0]["sha256"]


def test_predict_and_thresholds_match_validation(learned):
    out, val = learned
    preds = predict(out, val, progress=False, device="cpu", batch_size=32)  # as validation ran
    assert list(preds.columns) == ["image_id", *CHEXPERT_LABELS]
    assert len(preds) == 64 and preds.attrs["skipped"].empty
    truth = pd.read_parquet(val).set_index("image_id").loc[preds.image_id]
    aucs = [roc_auc_score(truth[c], preds[c]) for c in CHEXPERT_LABELS]
    assert np.mean(aucs) > 0.9
    saved = json.loads((out / "thresholds.json").read_text())
    assert saved["labels"] == list(CHEXPERT_LABELS) and saved["rule"] == ">="
    again = best_f1_thresholds(truth[list(CHEXPERT_LABELS)].to_numpy(float),
                               preds[list(CHEXPERT_LABELS)].to_numpy(float), CHEXPERT_LABELS)
    for c in CHEXPERT_LABELS:  # the saved thresholds are the F1 optimum on validation
        assert saved["thresholds"][c] == pytest.approx(again["thresholds"][c], abs=1e-6)


def test_predict_cli_reports_unreadable_images(learned, tmp_path):
    out, val = learned
    df = pd.read_parquet(val).head(5)
    df.loc[1, "path"] = "images/missing.png"
    df.loc[3, "path"] = "images/broken.png"
    (val.parent / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    m = val.parent / "bad.parquet"
    df.to_parquet(m)
    dest = tmp_path / "p.parquet"
    args = ["predict", "--model", str(out), "--manifest", str(m), "--out", str(dest), "--device",
            "cpu", "--batch-size", "2"]
    res = CliRunner().invoke(cli.main, args)  # 2 of 5 unreadable: above the default 5%
    assert res.exit_code == 2 and "2 of 5 images (40.0%)" in res.output and "p.skipped.csv" in res.output
    res = CliRunner().invoke(cli.main, args + ["--max-unreadable", "0.5"])
    assert res.exit_code == 0, res.output
    p = pd.read_parquet(dest)
    assert p.image_id.tolist() == [df.image_id[i] for i in (0, 2, 4)]
    skipped = pd.read_csv(tmp_path / "p.skipped.csv")
    assert skipped.image_id.tolist() == [df.image_id[1], df.image_id[3]]
    assert "not found" in skipped.reason[0] and "broken.png" in skipped.reason[1]
    meta = json.loads((tmp_path / "p.parquet.rv2.json").read_text())
    assert meta["n_skipped"] == 2 and meta["n_predicted"] == 3
    res = CliRunner().invoke(cli.main, ["predict", "--model", str(tmp_path), "--manifest", str(m),
                                        "--out", str(dest)])
    assert res.exit_code != 0 and "not a complete classifier folder" in res.output


class Crash(RuntimeError):
    pass


def test_resume_after_crash_reproduces_uninterrupted_run(tiny_data, tmp_path):
    def cfg(out):
        return ClassifierConfig(strategy="real", real=str(tiny_data["real"]), val=str(tiny_data["val"]),
                                out=str(out), image_size=32, init="scratch", epochs=3, batch_size=16,
                                lr=1e-3, num_workers=0, progress=False)

    full = train_classifier(cfg(tmp_path / "full"))

    def crash_after_2(phase, epoch, row):
        if epoch == 2:
            raise Crash("simulated crash")
    with pytest.raises(Crash):
        train_classifier(cfg(tmp_path / "crashed"), on_epoch_end=crash_after_2)
    assert (tmp_path / "crashed" / "state" / "last.pt").is_file()
    with pytest.raises(TrainingStateError, match="other settings"):
        train_classifier(ClassifierConfig(**{**cfg(tmp_path / "crashed").__dict__, "lr": 5e-4}))
    seen = []
    resumed = train_classifier(cfg(tmp_path / "crashed"), on_epoch_end=lambda p, e, r: seen.append(e))
    assert seen == [3]  # only the missing epoch ran
    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ha, hb = pd.read_csv(full / "history.csv"), pd.read_csv(resumed / "history.csv")
    pd.testing.assert_series_equal(ha.val_loss, hb.val_loss)
    assert json.loads((full / "thresholds.json").read_text())["thresholds"] == \
        json.loads((resumed / "thresholds.json").read_text())["thresholds"]


@pytest.mark.parametrize("strategy", ["real", "synthetic", "mixed", "pretrain-finetune"])
def test_strategies_end_to_end_cli(strategy, tiny_data, tmp_path):
    out = tmp_path / "m"
    args = ["train-classifier", "--strategy", strategy, "--real", str(tiny_data["real"]),
            "--synthetic", str(tiny_data["synthetic"]), "--val", str(tiny_data["val"]), "--out", str(out),
            "--image-size", "32", "--epochs", "2", "--max-steps", "2", "--batch-size", "8",
            "--num-workers", "0", "--init", "scratch", "--n-real", "20", "--n-synthetic", "16",
            "--set", "progress=false"]
    res = CliRunner().invoke(cli.main, args)
    assert res.exit_code == 0, res.output
    assert "validation mean AUROC" in res.output
    s = json.loads((out / "rv2_meta.json").read_text())["summary"]
    assert s["steps"] == 2 and s["stop_reason"] == "max_steps 2 reached"
    data = s["data"]
    if strategy in ("real", "mixed", "pretrain-finetune"):
        assert 20 <= data["real_used"]["images"] <= 21  # whole patients of 2 images
    if strategy in ("synthetic", "mixed", "pretrain-finetune"):
        assert data["synthetic_used"]["images"] == 16
    if strategy == "pretrain-finetune":
        pre = json.loads((out / "pretrain" / "rv2_meta.json").read_text())["summary"]
        assert pre["phase"] == "pretrain" and s["phase"] == "finetune"
        assert json.loads((out / "config.json").read_text())["finetune_lr"] == 5e-5
        assert any(i["path"].endswith("pretrain/model.safetensors")
                   for i in json.loads((out / "rv2_meta.json").read_text())["inputs"])
    # rerunning a finished run is a no-op
    res = CliRunner().invoke(cli.main, args)
    assert res.exit_code == 0, res.output


def test_sweep_table_with_shared_pretraining(tiny_data, tmp_path):
    res = CliRunner().invoke(cli.main, [
        "train-classifier", "sweep", "--strategies", "real,pretrain-finetune", "--n-real", "10,all",
        "--seeds", "0", "--real", str(tiny_data["real"]), "--synthetic", str(tiny_data["synthetic"]),
        "--val", str(tiny_data["val"]), "--out", str(tmp_path), "--image-size", "32", "--epochs", "1",
        "--max-steps", "1", "--batch-size", "8", "--num-workers", "0", "--init", "scratch",
        "--set", "progress=false"])
    assert res.exit_code == 0, res.output
    t = pd.read_csv(tmp_path / "sweep.csv")
    assert t.strategy.tolist() == ["real", "real", "pretrain-finetune", "pretrain-finetune"]
    assert t.n_real_images.tolist()[:2] == [10, 48] and t.n_real_images.tolist()[2:] == [10, 48]
    assert (tmp_path / "pretrain_s0" / "model.safetensors").is_file()
    assert not (tmp_path / "runs" / "pretrain-finetune_n10_s0" / "pretrain").exists()
    assert (tmp_path / "sweep.csv.rv2.json").is_file()


def test_clear_errors(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("RV2_WEIGHTS_DIR", str(tmp_path))
    base = ["train-classifier", "--real", str(tiny_data["real"]), "--val", str(tiny_data["val"]),
            "--image-size", "32", "--num-workers", "0"]
    res = CliRunner().invoke(cli.main, base + ["--out", str(tmp_path / "a"), "--init", "imagenet"])
    assert res.exit_code != 0 and "densenet121-a639ec97.pth" in res.output
    res = CliRunner().invoke(cli.main, base + ["--out", str(tmp_path / "b"), "--strategy", "mixed"])
    assert res.exit_code != 0 and "needs a synthetic manifest" in res.output
    res = CliRunner().invoke(cli.main, ["train-classifier", "--real", str(tmp_path / "nope.parquet"),
                                        "--val", str(tiny_data["val"]), "--out", str(tmp_path / "c")])
    assert res.exit_code != 0 and "manifest not found" in res.output


def test_bad_training_image_stops_or_is_skipped(tiny_data, tmp_path):
    df = pd.read_parquet(tiny_data["real"])
    df.loc[3, "path"] = "images/does_not_exist.png"
    m = tiny_data["real"].parent / "with_missing.parquet"
    df.to_parquet(m)
    kw = dict(real=str(m), val=str(tiny_data["val"]), image_size=32, init="scratch", epochs=1,
              max_steps=1, batch_size=64, num_workers=0, progress=False)
    with pytest.raises(ValueError, match="does_not_exist.png"):
        train_classifier(ClassifierConfig(out=str(tmp_path / "a"), **kw))
    out = train_classifier(ClassifierConfig(out=str(tmp_path / "b"), on_bad_image="skip", **kw))
    sk = pd.read_csv(out / "skipped_images.csv")
    assert sk.image_id.tolist() == [df.image_id[3]]


def test_label_policy_recorded_with_the_model_and_used_for_thresholds(tiny_data, tmp_path):
    """One label policy: the loss masks, the threshold counts and the model folder agree."""
    from rv2.data.label_policy import LabelPolicy

    kw = dict(real=str(tiny_data["real"]), val=str(tiny_data["val"]), image_size=32, init="scratch",
              epochs=1, max_steps=1, batch_size=16, num_workers=0, progress=False)
    val = pd.read_parquet(tiny_data["val"])
    raw = val[list(CHEXPERT_LABELS)].to_numpy(dtype=np.float64, na_value=np.nan)
    for text in ("uncertain=0,blank=0", "uncertain=ignore,blank=ignore"):
        out = train_classifier(ClassifierConfig(out=str(tmp_path / text.replace(",", "_")),
                                                label_policy=text, **kw))
        pol = LabelPolicy.parse(text)
        assert json.loads((out / "model_config.json").read_text())["label_policy"] == text
        thr = json.loads((out / "thresholds.json").read_text())
        assert thr["label_policy"] == text
        assert [thr["n"][k] for k in CHEXPERT_LABELS] == pol.kept(raw).tolist()
        s = json.loads((out / "rv2_meta.json").read_text())["summary"]
        assert s["data"]["label_policy"] == text
        assert list(s["data"]["labels_kept"]["val"].values()) == pol.kept(raw).tolist()


def test_version_1_config_maps_to_one_label_policy():
    old = {"config_class": "ClassifierConfig", "config_version": 1, "uncertain_policy": "ones",
           "unknown_policy": "ignore"}
    assert ClassifierConfig.from_dict(old).label_policy == "uncertain=1,blank=ignore"
    assert ClassifierConfig.from_dict({"config_version": 1}).label_policy == "uncertain=ignore,blank=0"
    with pytest.raises(ValueError, match="uncertain must be one of"):
        ClassifierConfig(label_policy="uncertain=maybe")


def test_early_stop_on_val_loss_and_best_checkpoint_by_auroc(tiny_data, tmp_path, monkeypatch):
    """Validation loss best at epoch 2, AUROC best at epoch 3, patience 2: stops after epoch 4
    and keeps epoch 3's weights."""
    import rv2.classify.train as tr

    losses = {1: 1.0, 2: 0.8, 3: 0.9, 4: 0.95, 5: 0.5}
    quality = {1: 0.2, 2: 0.5, 3: 3.0, 4: 1.0, 5: 0.1}
    real_evaluate = tr.evaluate
    calls = {"n": 0}
    saved = {}

    def fake_evaluate(model, ds, cfg, device, skipped=None):
        _, probs, target, mask = real_evaluate(model, ds, cfg, device, skipped)
        calls["n"] += 1
        e = calls["n"]
        if e not in losses:  # finalize's pass over the best weights
            return _, probs, target, mask
        rng = np.random.default_rng(e)
        p = 1 / (1 + np.exp(-(quality[e] * (2 * target - 1) + rng.normal(0, 1, target.shape))))
        saved[e] = {k: v.clone() for k, v in model.state_dict().items()}
        return losses[e], p.astype(np.float32), target, mask

    monkeypatch.setattr(tr, "evaluate", fake_evaluate)
    out = train_classifier(ClassifierConfig(real=str(tiny_data["real"]), val=str(tiny_data["val"]),
                                            out=str(tmp_path / "m"), image_size=32, init="scratch",
                                            epochs=5, patience=2, batch_size=24, num_workers=0,
                                            progress=False))
    s = json.loads((out / "rv2_meta.json").read_text())["summary"]
    assert s["epochs_run"] == 4 and s["best_epoch"] == 3
    assert "early stop" in s["stop_reason"]
    best = load_file(out / "model.safetensors")
    for k, v in best.items():
        assert torch.equal(v, saved[3][k]), k
    hist = pd.read_csv(out / "history.csv")
    assert hist.best.tolist() == [True, True, True, False]


def test_pretrain_finetune_resumes_in_the_finetune_phase(tiny_data, tmp_path):
    def cfg():
        return ClassifierConfig(strategy="pretrain-finetune", real=str(tiny_data["real"]),
                                synthetic=str(tiny_data["synthetic"]), val=str(tiny_data["val"]),
                                out=str(tmp_path / "m"), image_size=32, init="scratch", epochs=2,
                                batch_size=16, num_workers=0, progress=False)

    def crash(phase, epoch, row):
        if phase == "finetune" and epoch == 1:
            raise Crash("simulated crash")
    with pytest.raises(Crash):
        train_classifier(cfg(), on_epoch_end=crash)
    assert (tmp_path / "m" / "pretrain" / "model.safetensors").is_file()
    seen = []
    train_classifier(cfg(), on_epoch_end=lambda p, e, r: seen.append((p, e)))
    assert seen == [("finetune", 2)]
    hist = pd.read_csv(tmp_path / "m" / "history.csv")
    assert hist.phase.tolist() == ["finetune", "finetune"]
    assert hist.lr.iloc[0] < 5e-5  # cosine from the fine-tuning rate


def test_time_limit_stops_the_phase(tiny_data, tmp_path):
    out = train_classifier(ClassifierConfig(real=str(tiny_data["real"]), val=str(tiny_data["val"]),
                                            out=str(tmp_path / "m"), image_size=32, init="scratch",
                                            epochs=50, time_limit_s=1e-3, batch_size=8, num_workers=0,
                                            progress=False))
    s = json.loads((out / "rv2_meta.json").read_text())["summary"]
    assert s["steps"] == 1 and "time limit" in s["stop_reason"]


def test_sweep_grid():
    from rv2.classify.sweep import grid, run_name

    g = grid(["real", "synthetic", "mixed"], [100], [0.5], seeds=[0, 1])
    assert len(g) == 2 * (2 + 1 + 2)
    assert {"strategy": "synthetic", "n_real": None, "real_fraction": None, "seed": 1,
            "synthetic_multiple": None} in g
    assert run_name("mixed", None, 0.5, 1) == "mixed_f0.5_s1"
    with pytest.raises(ValueError, match="unknown strategies"):
        grid(["nope"], [], [], [0])


def test_sweep_synthetic_multiples_give_the_supplementation_curve(tiny_data, tmp_path):
    """Real data fixed (6 images), synthetic 0, 1 and 5 times that: one command."""
    res = CliRunner().invoke(cli.main, [
        "train-classifier", "sweep", "--strategies", "real,mixed", "--n-real", "6",
        "--synthetic-multiples", "0,1,5", "--seeds", "0", "--real", str(tiny_data["real"]),
        "--synthetic", str(tiny_data["synthetic"]), "--val", str(tiny_data["val"]), "--out", str(tmp_path),
        "--image-size", "32", "--epochs", "1", "--max-steps", "1", "--batch-size", "8",
        "--num-workers", "0", "--init", "scratch", "--set", "progress=false"])
    assert res.exit_code == 0, res.output
    t = pd.read_csv(tmp_path / "sweep.csv")
    assert t.strategy.tolist() == ["real", "mixed", "mixed", "mixed"]
    assert t.n_real_images.tolist() == [6, 6, 6, 6]
    assert t.synthetic_multiple.tolist()[1:] == [0, 1, 5] and np.isnan(t.synthetic_multiple[0])
    assert t.n_synthetic_requested.tolist() == [0, 0, 6, 30]
    assert t.n_synthetic_images.tolist() == [0, 0, 6, 30]
    assert (tmp_path / "runs" / "mixed_n6_x5_s0").is_dir()
    for m in (1, 5):
        s = json.loads((tmp_path / "runs" / f"mixed_n6_x{m}_s0" / "rv2_meta.json").read_text())["summary"]
        assert s["data"]["synthetic_used"]["images"] == 6 * m and s["data"]["real_used"]["images"] == 6
    x0 = json.loads((tmp_path / "runs" / "mixed_n6_x0_s0" / "rv2_meta.json").read_text())["summary"]
    assert "synthetic_used" not in x0["data"]  # multiple 0: the real subset alone
    res = CliRunner().invoke(cli.main, ["train-classifier", "sweep", "--synthetic-multiples", "1,x",
                                        "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2 and "--synthetic-multiples" in res.output


def test_sweep_grid_with_synthetic_multiples():
    from rv2.classify.sweep import grid, run_name

    g = grid(["real", "synthetic", "mixed", "pretrain-finetune"], [10], [], seeds=[0], multiples=[0, 2])
    by = [(r["strategy"], r["synthetic_multiple"]) for r in g]
    assert by == [("real", None), ("synthetic", 2), ("mixed", 0), ("mixed", 2), ("pretrain-finetune", 2)]
    assert run_name("mixed", 10, None, 0, 2) == "mixed_n10_x2_s0"
    with pytest.raises(ValueError, match=">= 0"):
        grid(["mixed"], [], [], [0], multiples=[-1])


def _short(tiny_data, out, **kw):
    base = dict(real=str(tiny_data["real"]), val=str(tiny_data["val"]), image_size=32, init="scratch",
                batch_size=16, lr=1e-3, num_workers=0, progress=False, n_real=16)
    return train_classifier(ClassifierConfig(out=str(out), **{**base, **kw}))


def test_lr_schedule_ends_at_its_planned_value_and_is_recorded(tiny_data, tmp_path):
    # cosine planned over the run's 2 epochs: the last epoch ends at lr x min_lr_ratio
    out = _short(tiny_data, tmp_path / "cos", epochs=2, min_lr_ratio=0.1)
    hist = pd.read_csv(out / "history.csv")
    assert hist.lr.iloc[-1] == pytest.approx(1e-4, rel=1e-6) and hist.lr.iloc[0] > 1e-4
    s = json.loads((out / "rv2_meta.json").read_text())["summary"]
    plan = s["lr_schedule"]
    assert plan["kind"] == "cosine" and plan["planned_epochs"] == 2 and plan["planned_over"] == "epochs"
    assert plan["planned_steps"] == s["steps"] and s["final_lr"] == pytest.approx(plan["end_lr"])
    assert json.loads((out / "model_config.json").read_text())["lr_schedule"] == plan
    # planned over expected_epochs=1 of at most 3: at its end value after epoch 1, held there
    out = _short(tiny_data, tmp_path / "exp", epochs=3, expected_epochs=1)
    hist = pd.read_csv(out / "history.csv")
    assert hist.lr.tolist() == [0.0, 0.0, 0.0]
    assert json.loads((out / "rv2_meta.json").read_text())["summary"]["lr_schedule"]["planned_over"] == \
        "expected_epochs"
    out = _short(tiny_data, tmp_path / "const", epochs=2, lr_schedule="constant")
    assert pd.read_csv(out / "history.csv").lr.tolist() == [1e-3, 1e-3]


def test_plateau_schedule_cuts_the_rate_when_validation_loss_stalls(tiny_data, tmp_path, monkeypatch):
    import rv2.classify.train as tr

    losses = iter([1.0, 0.9, 0.95, 0.97])
    real_evaluate = tr.evaluate

    def fake_evaluate(model, ds, cfg, device, skipped=None):
        loss, probs, target, mask = real_evaluate(model, ds, cfg, device, skipped)
        return next(losses, loss), probs, target, mask

    monkeypatch.setattr(tr, "evaluate", fake_evaluate)
    out = _short(tiny_data, tmp_path / "plateau", epochs=4, lr_schedule="plateau", plateau_patience=1,
                 plateau_factor=0.5)
    hist = pd.read_csv(out / "history.csv")
    # epoch 3 is the first bad epoch, epoch 4 the second: patience 1 cuts after it
    assert hist.lr.tolist() == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4])
    plan = json.loads((out / "rv2_meta.json").read_text())["summary"]["lr_schedule"]
    assert plan == {"kind": "plateau", "start_lr": 1e-3, "factor": 0.5, "patience": 1,
                    "monitor": "validation loss"}


def test_mixed_views_warn_once_and_views_pa_filters(tiny_data, tmp_path, caplog):
    df = pd.read_parquet(tiny_data["real"])
    df.loc[df.index[:10], "view"] = "AP"
    df.loc[df.index[10:12], "view"] = "LATERAL"
    mixed = tiny_data["real"].parent / "mixed_views.parquet"
    df.to_parquet(mixed)
    kw = dict(real=str(mixed), val=str(tiny_data["val"]), epochs=1, max_steps=1)
    with caplog.at_level("WARNING", logger="rv2.data.views"):
        out = _short(tiny_data, tmp_path / "all", **{**kw, "n_real": None})
    warnings = [r.getMessage() for r in caplog.records if r.name == "rv2.data.views"]
    assert len(warnings) == 1 and "mixed views (PA 36, AP 10, LATERAL 2)" in warnings[0]
    s = json.loads((out / "rv2_meta.json").read_text())["summary"]
    assert s["data"]["real_used"]["images"] == 48
    assert s["data"]["views"]["real"] == {"setting": "all", "present": {"PA": 36, "AP": 10, "LATERAL": 2},
                                          "used": {"PA": 36, "AP": 10, "LATERAL": 2}}
    caplog.clear()
    with caplog.at_level("WARNING", logger="rv2.data.views"):
        out = _short(tiny_data, tmp_path / "pa", **{**kw, "n_real": None, "views": "PA"})
    assert not [r for r in caplog.records if r.name == "rv2.data.views"]
    s = json.loads((out / "rv2_meta.json").read_text())["summary"]
    assert s["data"]["real_used"]["images"] == 36 and s["data"]["views"]["real"]["used"] == {"PA": 36}
    with pytest.raises(ValueError, match="is not a view"):
        ClassifierConfig(views="frontal")
