"""A small synthetic test set: manifest, two models' predictions and thresholds."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from rv2.data.schema import CHEXPERT_LABELS, age_bin


def make_world(tmp: Path, n: int = 600, seed: int = 0, datasets=("mimic",)) -> dict:
    rng = np.random.default_rng(seed)
    sex = rng.choice(["F", "M"], n)
    race = rng.choice(["Asian", "Black", "Hispanic", "White", "Other"], n,
                      p=[0.15, 0.2, 0.15, 0.45, 0.05])
    age = rng.uniform(18, 95, n).round()
    man = pd.DataFrame({"image_id": [f"img{i:05d}" for i in range(n)],
                        "patient_id": [f"p{i // 2}" for i in range(n)],
                        "dataset": rng.choice(list(datasets), n), "split": "test",
                        "sex": sex, "race": race, "age": age,
                        "age_bin": [age_bin(a) for a in age]})
    latent = rng.normal(size=(n, len(CHEXPERT_LABELS)))
    truth = (latent > 0.8).astype(float)
    truth[rng.random(truth.shape) < 0.05] = -1.0
    truth[rng.random(truth.shape) < 0.05] = np.nan
    for j, lab in enumerate(CHEXPERT_LABELS):
        man[lab] = truth[:, j]
    man["No Finding"] = np.where(np.nan_to_num(truth[:, 1:]).max(axis=1) > 0, 0.0, 1.0)
    preds = []
    for k, noise in enumerate((1.2, 0.7)):
        s = 1 / (1 + np.exp(-(latent + rng.normal(scale=noise, size=latent.shape))))
        df = pd.DataFrame(s, columns=list(CHEXPERT_LABELS))
        df.insert(0, "image_id", man["image_id"])
        nf = 1 - s[:, 1:].max(axis=1)
        df["No Finding"] = nf
        df = df.sample(frac=1.0, random_state=k).reset_index(drop=True)  # order must not matter
        p = tmp / f"pred_{k}.parquet"
        df.to_parquet(p, index=False)
        mdir = tmp / f"model_{k}"
        mdir.mkdir(exist_ok=True)
        (mdir / "thresholds.json").write_text(json.dumps({
            "labels": list(CHEXPERT_LABELS), "rule": ">=",
            "thresholds": {lab: 0.5 for lab in CHEXPERT_LABELS} | {"No Finding": 0.2}}))
        preds.append(p)
    mp = tmp / "manifest.parquet"
    man.to_parquet(mp, index=False)
    return {"manifest": mp, "preds": preds, "models": [tmp / "model_0", tmp / "model_1"],
            "frame": man}
