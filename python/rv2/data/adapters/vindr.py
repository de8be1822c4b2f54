"""VinDr-CXR (Kaggle train.csv or PhysioNet image_labels_*.csv) -> manifest rows."""
from __future__ import annotations

import numpy as np
import pandas as pd

from rv2.data import labels as lab
from rv2.data.adapters.base import ExclusionTracker, read_header, read_table
from rv2.data.config import IndexConfig
from rv2.data.schema import CHEXPERT_LABELS
from rv2.errors import UserError


def index_vindr(files, root, cfg: IndexConfig, *, progress=True):
    frames = []
    kaggle = False
    for f in files:
        cols = set(read_header(f))
        split = "test" if "test" in f.name.lower() else "train"
        raw = read_table(f)
        if {"image_id", "class_name"} <= cols:  # Kaggle: one row per reader x finding
            kaggle = True
            names = raw["class_name"].astype(str)
            per = pd.DataFrame({"image_id": raw["image_id"].astype(str),
                                "rad_id": raw.get("rad_id", pd.Series(["R"] * len(raw))).astype(str)})
            for src, dst in lab.VINDR_LABELS.items():
                per[dst] = (names == src).astype(float)
            # a reader's vote per image: any of their boxes
            per = per.groupby(["image_id", "rad_id"], sort=False).max().reset_index()
        elif {"image_id", "rad_id"} <= cols:  # PhysioNet image_labels: one row per reader
            per = pd.DataFrame({"image_id": raw["image_id"].astype(str),
                                "rad_id": raw["rad_id"].astype(str)})
            for src, dst in lab.VINDR_LABELS.items():
                col = next((c for c in raw.columns if c.lower() == src.lower()), None)
                per[dst] = (pd.to_numeric(raw[col], errors="coerce").to_numpy(dtype=float)
                            if col is not None else np.nan)
        else:
            raise UserError(f"vindr: {f} is neither the Kaggle train.csv (image_id, class_name, "
                             "rad_id, boxes) nor PhysioNet image_labels_*.csv")
        per["split"] = split
        frames.append(per)
    per = pd.concat(frames, ignore_index=True)
    classes = sorted(set(lab.VINDR_LABELS.values()))
    g = per.groupby("image_id", sort=False)
    if cfg.vindr_aggregate == "any":
        agg = g[classes].max()
    else:
        agg = (g[classes].mean() > 0.5).astype(float).where(g[classes].count() > 0)
    split = g["split"].first()
    if kaggle:  # the Kaggle file has no Edema / Pneumonia
        for c in lab.VINDR_KAGGLE_ONLY_MISSING:
            agg[c] = np.nan
    # a finding of any reader overrides "No finding" of another
    findings = [c for c in classes if c != "No Finding"]
    any_finding = (agg[findings] == 1).any(axis=1)
    agg["No Finding"] = np.where(any_finding, 0.0, agg["No Finding"])
    ids = agg.index.to_numpy()
    df = pd.DataFrame({"image_id": ids,
                       "path": [f"{s}/{i}.dicom" for s, i in zip(split.to_numpy(), ids)],
                       "patient_id": ids, "study_id": ids, "view": None, "sex": None,
                       "age": np.nan, "race": None,
                       "split": split.to_numpy(),
                       "readers": g["rad_id"].nunique().to_numpy()})
    for c in CHEXPERT_LABELS:
        df[c] = agg[c].to_numpy(dtype=float) if c in agg else np.nan
    return df, ExclusionTracker(df, "images in VinDr label file(s)"), {
        "reader_aggregate": cfg.vindr_aggregate,
        "note": "VinDr has no patient id or demographics in its label files: patient_id = "
                "image_id; view, sex and age are null (the paper does no subgroup analysis)"}
