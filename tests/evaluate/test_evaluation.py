"""evaluate_predictions / compare_predictions on files, the report and the CLI."""
import json
import math

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from rv2.cli import main
from rv2.data.schema import EVAL_LABELS
from rv2.evaluate import compare_predictions, evaluate_predictions
from rv2.evaluate.evaluation import EvaluateConfig
from rv2.evaluate.io import EvaluationInputError
from rv2.evaluate.streams import STREAM
from sklearn.metrics import roc_auc_score

from .fixtures import make_world

CFG = EvaluateConfig(n_boot=60, n_perm=60)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), n=700, datasets=("mimic", "nih"))


def test_evaluate_writes_report_with_correct_numbers(world, tmp_path):
    out = tmp_path / "rep"
    r = evaluate_predictions(world["preds"][0], world["manifest"], model_dir=world["models"][0],
                             out=out, config=CFG, progress=False)
    for name in ("report.json", "report.md", "report.html", "rv2_meta.json",
                 "figures/auroc.png", "figures/fairness_gap_vs_auroc.png",
                 "figures/underdiagnosis_gap_vs_auroc.png",
                 "figures/subgroups_mimic_sex_race.png"):
        assert (out / name).is_file(), name
    data = json.loads((out / "report.json").read_text())  # strict JSON: NaN written as null
    assert set(data["test_sets"]) == {"mimic", "nih"}
    man = world["frame"]
    pred = pd.read_parquet(world["preds"][0]).set_index("image_id").loc[man["image_id"]]
    rows = (man["dataset"] == "nih").to_numpy()
    per = r["test_sets"]["nih"]["models"]["model_0"]["per_label"]
    aucs = []
    for lab in EVAL_LABELS:  # default label policy: uncertain and blank are negatives
        y = np.nan_to_num(man[lab].to_numpy()[rows].clip(0, 1), nan=0.0)
        ref = roc_auc_score(y, pred[lab].to_numpy()[rows])
        assert per[lab]["auroc"]["estimate"] == pytest.approx(ref, abs=1e-12)
        assert per[lab]["n"] == int(rows.sum())
        aucs.append(ref)
    assert data["label_policy"]["policy"] == "uncertain=0,blank=0"
    assert data["bootstrap"]["unit"] == "patient" and data["bootstrap"]["draws"] == STREAM
    assert STREAM in (out / "report.md").read_text()  # the report says which draws
    assert data["test_sets"]["nih"]["units"] == man.loc[rows, "patient_id"].nunique()
    mac = r["test_sets"]["nih"]["models"]["model_0"]["macro"]
    assert mac["auroc"]["estimate"] == pytest.approx(np.mean(aucs))
    assert mac["auroc"]["low"] < mac["auroc"]["estimate"] < mac["auroc"]["high"]
    fair = r["test_sets"]["nih"]["models"]["model_0"]["fairness"]["sex_race"]
    assert len(fair["subgroups"]) == 8
    ud = [s["underdiagnosis"]["estimate"] for s in fair["subgroups"] if s["in_underdiagnosis_gap"]]
    assert fair["underdiagnosis_gap"]["estimate"] == pytest.approx(max(ud) - min(ud))
    # underdiagnosis by hand: FPR of NF >= threshold among true NF = 0
    g = rows & (man["sex"] == "F").to_numpy() & (man["race"] == "Black").to_numpy()
    neg = g & (man["No Finding"] == 0).to_numpy()
    expect = (pred["No Finding"].to_numpy()[neg] >= 0.2).mean()
    row = next(s for s in fair["subgroups"] if s["group"] == "female / Black")
    assert row["underdiagnosis"]["estimate"] == pytest.approx(expect)
    md = (out / "report.md").read_text()
    assert "female / Black" in md and "fairness gap" in md
    assert "uncertain=0,blank=0" in md and "undefined labels: skip" in md
    # the old rule, asked for explicitly: -1 and blank left out
    old = evaluate_predictions(world["preds"][0], world["manifest"], progress=False,
                               config=EvaluateConfig(n_boot=20, label_policy="uncertain=ignore,"
                                                                            "blank=ignore"))
    lab = "Atelectasis"
    y = man[lab].to_numpy()[rows]
    k = (y == 0) | (y == 1)
    assert old["test_sets"]["nih"]["models"]["pred_0"]["per_label"][lab]["auroc"]["estimate"] \
        == pytest.approx(roc_auc_score(y[k], pred[lab].to_numpy()[rows][k]), abs=1e-12)


def test_label_policy_follows_the_model_and_refuses_another(world, tmp_path):
    mdir = tmp_path / "m"
    mdir.mkdir()
    th = json.loads((world["models"][0] / "thresholds.json").read_text())
    (mdir / "thresholds.json").write_text(json.dumps(th))
    (mdir / "model_config.json").write_text(json.dumps({"label_policy": "uncertain=1,blank=0"}))
    cfg = EvaluateConfig(n_boot=20)
    r = evaluate_predictions(world["preds"][0], world["manifest"], model_dir=mdir, config=cfg,
                             progress=False)
    assert r["label_policy"]["policy"] == "uncertain=1,blank=0"
    assert r["label_policy"]["source"] == "recorded with the model"
    other = EvaluateConfig(n_boot=20, label_policy="uncertain=0,blank=0")
    with pytest.raises(EvaluationInputError, match="differs from the one the model.*"
                                                    "--allow-label-policy-mismatch"):
        evaluate_predictions(world["preds"][0], world["manifest"], model_dir=mdir, config=other)
    r = evaluate_predictions(world["preds"][0], world["manifest"], model_dir=mdir,
                             config=EvaluateConfig(n_boot=20, label_policy="uncertain=0,blank=0",
                                                   allow_label_policy_mismatch=True),
                             out=tmp_path / "rep", progress=False)
    assert r["label_policy"]["mismatch_allowed"]
    assert "allowed explicitly" in (tmp_path / "rep" / "report.md").read_text()
    res = CliRunner().invoke(main, ["evaluate", "--pred", str(world["preds"][0]), "--manifest",
                                    str(world["manifest"]), "--model", str(mdir), "--out",
                                    str(tmp_path / "cli"), "--label-policy", "uncertain=0"])
    assert res.exit_code != 0 and "differs from the one the model" in res.output


def test_bootstrap_unit_and_undefined_label_rule(world, tmp_path):
    base = {"n_boot": 40, "by_test_set": False}
    pat = evaluate_predictions(world["preds"][0], world["manifest"], progress=False,
                               config=EvaluateConfig(**base))
    img = evaluate_predictions(world["preds"][0], world["manifest"], progress=False,
                               config=EvaluateConfig(bootstrap_unit="image", **base))
    a = pat["test_sets"]["all"]["models"]["pred_0"]["macro"]["auroc"]
    b = img["test_sets"]["all"]["models"]["pred_0"]["macro"]["auroc"]
    assert a["estimate"] == b["estimate"] and (a["low"], a["high"]) != (b["low"], b["high"])
    assert pat["bootstrap"]["unit"] == "patient" and img["bootstrap"]["unit"] == "image"
    man = pd.read_parquet(world["manifest"])
    man.drop(columns="patient_id").assign(Edema=0.0).to_parquet(tmp_path / "m.parquet")
    skip = evaluate_predictions(world["preds"][0], tmp_path / "m.parquet", progress=False,
                                config=EvaluateConfig(**base))
    zero = evaluate_predictions(world["preds"][0], tmp_path / "m.parquet", progress=False,
                                config=EvaluateConfig(undefined_label="zero", **base),
                                out=tmp_path / "z")
    assert skip["bootstrap"] == {"unit": "image", "reason": "the manifest has no patient_id",
                                 "draws": STREAM}
    ms = skip["test_sets"]["all"]["models"]["pred_0"]["macro"]
    mz = zero["test_sets"]["all"]["models"]["pred_0"]["macro"]
    assert ms["labels_undefined"] == mz["labels_undefined"] == ["Edema"]
    assert ms["labels_in_macro"] == 7 and mz["labels_in_macro"] == 8
    assert mz["auroc"]["estimate"] == pytest.approx(ms["auroc"]["estimate"] * 7 / 8)
    md = (tmp_path / "z" / "report.md").read_text()
    assert "undefined labels: zero" in md and "scored 0 in the macro): Edema" in md


def test_compare_is_paired_and_machine_readable(world, tmp_path):
    r = compare_predictions(world["preds"], world["manifest"], model_dirs=world["models"],
                            out=tmp_path / "cmp", config=CFG, progress=False)
    data = json.loads((tmp_path / "cmp" / "report.json").read_text())
    c = data["test_sets"]["mimic"]["comparisons"]["model_1"]
    for lab in EVAL_LABELS:
        v = c["per_label"][lab]
        assert v["delong"]["p"] < 0.05 and v["delong"]["auc_a"] > v["delong"]["auc_b"]
        assert 0 < v["ap_permutation_p"] <= 1
        assert v["auroc_diff"]["estimate"] == pytest.approx(
            v["delong"]["auc_a"] - v["delong"]["auc_b"], abs=1e-12)
    m = c["macro"]
    assert m["auroc"]["diff"]["low"] > 0 and m["auroc"]["bootstrap_test"]["p"] < 0.05
    assert m["auroc"]["test"]["method"] == "delong" and m["auroc"]["test"]["p"] < 0.05
    assert m["auroc"]["delong"]["diff"] == pytest.approx(m["auroc"]["diff"]["estimate"])
    assert "multi-label DeLong" in data["methods"]["macro_auroc"]
    assert "ranks" in data["methods"]["auprc"]
    assert m["ap"]["permutation_p"] == pytest.approx(1 / (CFG.n_perm + 1))
    a0 = r["test_sets"]["mimic"]["models"]["model_0"]["macro"]["auroc"]["estimate"]
    a1 = r["test_sets"]["mimic"]["models"]["model_1"]["macro"]["auroc"]["estimate"]
    assert m["auroc"]["diff"]["estimate"] == pytest.approx(a1 - a0)
    assert (tmp_path / "cmp" / "figures" / "subgroups_nih_sex_age.png").is_file()


def test_mismatched_ids_and_bad_scores_are_clear_errors(world, tmp_path):
    df = pd.read_parquet(world["preds"][0])
    df.iloc[:-3].to_parquet(tmp_path / "short.parquet")
    with pytest.raises(EvaluationInputError, match="3 manifest row.*no prediction"):
        evaluate_predictions(tmp_path / "short.parquet", world["manifest"], config=CFG)
    bad = df.copy()
    bad.loc[5, "Edema"] = np.nan
    bad.to_parquet(tmp_path / "nan.parquet")
    with pytest.raises(EvaluationInputError, match="NaN or infinite.*Edema"):
        evaluate_predictions(tmp_path / "nan.parquet", world["manifest"], config=CFG)
    extra = pd.concat([df, df.iloc[:1].assign(image_id="stranger")])
    extra.to_parquet(tmp_path / "extra.parquet")
    with pytest.raises(EvaluationInputError, match="not in the manifest.*stranger"):
        evaluate_predictions(tmp_path / "extra.parquet", world["manifest"], config=CFG)
    with pytest.raises(EvaluationInputError, match="thresholds not found"):
        evaluate_predictions(world["preds"][0], world["manifest"], model_dir=tmp_path, config=CFG)


def test_tiny_subgroups_and_one_class_labels(tmp_path):
    w = make_world(tmp_path, n=160, seed=3)
    man = pd.read_parquet(w["manifest"])
    man["Pneumothorax"] = 0.0  # no positives: NaN, out of the macro, counted
    man.to_parquet(w["manifest"])
    r = evaluate_predictions(w["preds"][1], w["manifest"], model_dir=w["models"][1],
                             config=EvaluateConfig(n_boot=30, min_count=16), progress=False)
    res = r["test_sets"]["mimic"]["models"]["model_1"]
    assert math.isnan(res["per_label"]["Pneumothorax"]["auroc"]["estimate"])
    assert res["macro"]["labels_in_macro"] == 7
    assert res["macro"]["labels_undefined"] == ["Pneumothorax"]
    sub = res["fairness"]["sex_race"]["subgroups"]
    assert any(s["n"] < 16 and not s["in_fairness_gap"] for s in sub)
    assert all(s["in_fairness_gap"] == (s["n"] >= 16 and not math.isnan(s["auroc"]["estimate"]))
               for s in sub)


def test_cli_evaluate_and_compare(world, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["evaluate", "--pred", str(world["preds"][0]), "--manifest",
                               str(world["manifest"]), "--model", str(world["models"][0]),
                               "--out", str(tmp_path / "e"), "--set", "n_boot=20",
                               "--split", "test"])
    assert res.exit_code == 0, res.output
    assert "macro AUROC" in res.output and (tmp_path / "e" / "report.html").is_file()
    sweep = pd.DataFrame({"strategy": ["real"] * 4 + ["pretrain-finetune"] * 4,
                          "n_real_images": [100, 100, 1000, 1000] * 2, "seed": [0, 1] * 4,
                          "val_auroc_mean": [0.6, 0.62, 0.7, 0.71, 0.66, 0.67, 0.73, 0.74]})
    sweep.to_csv(tmp_path / "sweep.csv", index=False)
    res = runner.invoke(main, ["compare", "--pred", str(world["preds"][0]), "--pred",
                               str(world["preds"][1]), "--manifest", str(world["manifest"]),
                               "--name", "real", "--name", "synth", "--sweep",
                               str(tmp_path / "sweep.csv"), "--out", str(tmp_path / "c"),
                               "--set", "n_boot=20", "--set", "n_perm=20"])
    assert res.exit_code == 0, res.output
    assert "synth - real" in res.output
    assert (tmp_path / "c" / "figures" / "label_efficiency.png").is_file()
    assert "No thresholds given" in (tmp_path / "c" / "report.md").read_text()
    res = runner.invoke(main, ["compare", "--pred", str(world["preds"][0]), "--manifest",
                               str(world["manifest"]), "--out", str(tmp_path / "x")])
    assert res.exit_code != 0 and "at least two --pred" in res.output
    res = runner.invoke(main, ["evaluate", "--pred", str(world["preds"][0]), "--manifest",
                               str(world["manifest"]), "--out", str(tmp_path / "y"),
                               "--split", "val"])
    assert res.exit_code != 0 and "no rows with split == 'val'" in res.output


def test_sweep_table_of_synthetic_multiples_plots_over_the_multiple(tmp_path):
    from rv2.evaluate.report_writer import read_sweep

    t = pd.DataFrame({"strategy": ["real"] + ["mixed"] * 6, "seed": [0, 0, 0, 0, 1, 1, 1],
                      "synthetic_multiple": [np.nan, 0, 1, 5, 0, 1, 5],
                      "n_real_images": [100] * 7, "val_auroc_mean": [0.7, 0.7, 0.74, 0.8, 0.72, 0.76, 0.8]})
    t.to_csv(tmp_path / "sweep.csv", index=False)
    agg, x, y = read_sweep(tmp_path / "sweep.csv")
    assert x == "synthetic_multiple" and y == "val_auroc_mean"
    assert agg["synthetic_multiple"].tolist() == [0, 1, 5]
    assert agg["mean"].tolist() == pytest.approx([0.71, 0.75, 0.8])
    # several real sizes: the label-efficiency curve over the real size, as before
    t.loc[4:, "n_real_images"] = 200
    t.to_csv(tmp_path / "sweep2.csv", index=False)
    assert read_sweep(tmp_path / "sweep2.csv")[1] == "n_real_images"
