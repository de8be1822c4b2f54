"""generate_dataset end to end on a tiny model: retries, store, manifest contract, resume."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from gen_helpers import STEPS, mean_qc, prompts_table, tiny
from PIL import Image
from rv2.data.schema import CHEXPERT_LABELS, REQUIRED_COLUMNS
from rv2.generate.config import GenerateConfig
from rv2.generate.pipeline import PromptsError, generate_dataset, load_prompts
from rv2.generate.qc_rules import judge
from rv2.generate.seeds import seed_for
from rv2.generate.store import StoreError


def _cfg(**kw):
    cfg = GenerateConfig()
    cfg.sampler.steps = STEPS
    cfg.sampler.device = "cpu"
    cfg.store.shard_size = 3
    cfg.batch_size = kw.pop("batch_size", 3)
    cfg.max_attempts = kw.pop("max_attempts", 3)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture(scope="module")
def comp():
    torch.set_num_threads(1)
    return tiny(0)


def test_judge_rules():
    rec = judge(np.array([0.9, 0.2, 0.9]), np.array([[0.1, 0.2, 0.7]] * 3), np.array([50.0, 70.0, 90.0]),
                ["F", "F", "M"], ["White", "Hispanic", "Black"], [40, 50, 60], age_tolerance=16)
    assert [r["qc_pass"] for r in rec] == [True, False, False]
    assert rec[1]["qc_fail_reasons"] == "sex;age" and rec[1]["qc_race_ok"] is None
    assert rec[1]["qc_race_checked"] is False  # Hispanic: unchecked, not failed
    assert rec[2]["qc_fail_reasons"] == "sex;race;age"
    assert rec[0]["qc_p_white"] == pytest.approx(0.7) and rec[0]["qc_age_pred"] == 50.0


def test_prompt_table_errors(tmp_path):
    df = prompts_table(4)
    with pytest.raises(PromptsError, match="not found"):
        load_prompts(tmp_path / "nope.parquet")
    with pytest.raises(PromptsError, match="missing column"):
        load_prompts(df.drop(columns=["split", "Edema"]))
    bad = df.copy()
    bad.loc[0, "race"] = "Other"
    with pytest.raises(PromptsError, match=r"column 'race' has value\(s\) \['Other'\]"):
        load_prompts(bad)
    dup = pd.concat([df, df.iloc[:1]])
    with pytest.raises(PromptsError, match="unique"):
        load_prompts(dup)


def test_generate_with_retries_and_valid_manifest(tmp_path, comp):
    df = prompts_table(8)
    out = tmp_path / "store"
    s = generate_dataset(df, None, out, _cfg(), qc_models=mean_qc(), components=comp, progress=False)
    from rv2.data.manifest import read_manifest, read_sidecar

    man = read_manifest(out / "manifest.parquet")  # validated by the data stage's reader
    assert read_sidecar(out / "manifest.parquet")["counts"]["rows"] == len(man)
    log = pd.read_parquet(out / "qc_log.parquet")
    # every prompt is accepted once or failed after max_attempts
    assert s["accepted"] + s["failed"] == 8 and s["accepted"] == len(man)
    assert man["prompt_id"].is_unique and man["image_id"].is_unique
    per_prompt = log.groupby("prompt_id")["attempt"].agg(["count", "max"])
    for pid, row in per_prompt.iterrows():
        if pid in set(man["prompt_id"]):
            acc = man.set_index("prompt_id").loc[pid]
            assert row["max"] == acc["attempt"] and row["count"] == acc["attempt"] + 1
        else:
            assert row["count"] == 3  # failed: all attempts used
    assert sum(s["attempts_histogram"].values()) == 8
    assert (log["seed"] == [seed_for(p, a) for p, a in zip(log["prompt_id"], log["attempt"])]).all()
    assert not log.duplicated(["prompt_id", "attempt"]).any()
    # something was retried and something failed with this stand-in QC
    assert log["attempt"].max() >= 1
    # manifest is an rv2 dataset manifest built from the REQUESTED demographics
    for c in REQUIRED_COLUMNS:
        assert c in man.columns, c
    src = df.set_index("prompt_id")
    for _, r in man.iterrows():
        sr = src.loc[r["prompt_id"]]
        assert (r["sex"], r["race"], r["age"], r["split"]) == (sr["sex"], sr["race"], sr["age"], sr["split"])
        for lab in CHEXPERT_LABELS:
            assert (np.isnan(r[lab]) and np.isnan(sr[lab])) or r[lab] == sr[lab]
        assert r["dataset"] == "synthetic" and r["view"] == "PA" and r["qc_pass"]
        img = Image.open(out / r["path"])
        assert img.mode == "L" and img.size == (32, 32) and r["path"].endswith(".png")
    # shards bounded
    shards = [p for p in (out / "images").iterdir()]
    assert all(len(list(p.iterdir())) <= 3 for p in shards)
    files = {p.relative_to(out).as_posix() for p in (out / "images").rglob("*") if p.is_file()}
    assert files == set(man["path"])
    assert {"rv2_version", "model_hash", "qc_model", "seed", "attempt", "qc_p_female",
            "qc_p_asian", "qc_age_pred", "qc_fail_reasons"} <= set(man.columns)
    summ = json.loads((out / "summary.json").read_text())
    assert summ["accepted"] == s["accepted"] and (out / "rv2_meta.json").is_file()
    assert (out / "manifest.parquet.rv2.json").is_file()

    # same prompts, different batch size -> same accepted images (seeds per prompt/attempt)
    out2 = tmp_path / "store2"
    generate_dataset(df.iloc[::-1], None, out2, _cfg(batch_size=5), qc_models=mean_qc(),
                     components=comp, progress=False)
    man2 = pd.read_parquet(out2 / "manifest.parquet").set_index("prompt_id")
    same = 0
    for _, r in man.iterrows():
        if r["prompt_id"] in man2.index:
            a = np.asarray(Image.open(out / r["path"]), dtype=int)
            b = np.asarray(Image.open(out2 / man2.loc[r["prompt_id"], "path"]), dtype=int)
            assert np.abs(a - b).max() <= 1
            same += 1
    assert same >= max(1, len(man) - 1)

    # rerun on a finished store: nothing to do, nothing duplicated
    s3 = generate_dataset(df, None, out, _cfg(), qc_models=mean_qc(), components=comp, progress=False)
    assert s3["this_run"]["attempts"] == 0 and s3["accepted"] == s["accepted"]
    # the same prompt ids with other texts are refused
    edited = df.copy()
    edited["prompt"] = edited["prompt"] + " edited"
    with pytest.raises(StoreError, match="text differs"):
        generate_dataset(edited, None, out, _cfg(), qc_models=mean_qc(), components=comp,
                         progress=False)
    # other sampler settings on the same store are refused
    with pytest.raises(StoreError, match="other settings"):
        cfg = _cfg()
        cfg.sampler.guidance = 2.0
        generate_dataset(df, None, out, cfg, qc_models=mean_qc(), components=comp, progress=False)


def test_resume_after_torn_journal_and_orphans(tmp_path, comp):
    df = prompts_table(4)
    out = tmp_path / "store"
    cfg = _cfg(max_attempts=1)
    cfg.qc.enabled = False
    cfg.store.image_format = "jpeg"
    s = generate_dataset(df, None, out, cfg, qc_models=None, components=comp, progress=False)
    assert s["accepted"] == 4
    man = pd.read_parquet(out / "manifest.parquet")
    first = man.iloc[0]
    data_before = (out / first["path"]).read_bytes()
    # simulate a crash: last journal line torn, an image with no journal line, a temp file
    j = out / "journal.jsonl"
    lines = j.read_bytes().splitlines(keepends=True)
    j.write_bytes(b"".join(lines[:-1]) + lines[-1][:25])
    lost = json.loads(lines[-1])
    (out / first["path"]).parent.joinpath(".x.png.tmp").write_bytes(b"partial")
    s2 = generate_dataset(df, None, out, cfg, qc_models=None, components=comp, progress=False)
    assert s2["this_run"]["attempts"] == 1 and s2["accepted"] == 4
    man2 = pd.read_parquet(out / "manifest.parquet")
    assert man2["prompt_id"].is_unique and len(man2) == 4 and lost["prompt_id"] in set(man2["prompt_id"])
    files = {p.relative_to(out).as_posix() for p in (out / "images").rglob("*") if p.is_file()}
    assert files == set(man2["path"]) and all(f.endswith(".jpg") for f in files)
    assert (out / first["path"]).read_bytes() == data_before


def test_nonfinite_images_never_pass(tmp_path, comp, monkeypatch):
    from rv2.generate.eager import EagerDecoder

    real = EagerDecoder.decode

    def broken(self, latents):  # fp16 overflow in a VAE looks like this
        img = real(self, latents).clone()
        img[0] = float("nan")
        return img

    monkeypatch.setattr(EagerDecoder, "decode", broken)
    cfg = _cfg(max_attempts=2, batch_size=4)
    cfg.qc.enabled = False
    s = generate_dataset(prompts_table(2), None, tmp_path / "o", cfg, qc_models=None,
                         components=comp, progress=False)
    log = pd.read_parquet(tmp_path / "o" / "qc_log.parquet")
    # batch 1 = both prompts (the first one NaN); batch 2 = its retry alone (NaN again)
    assert s["accepted"] == 1 and s["failed"] == 1
    assert s["failed_by_attribute"] == {"nonfinite": 1}
    assert (log["qc_fail_reasons"] == "nonfinite").sum() == 2
