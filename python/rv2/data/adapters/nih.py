"""NIH ChestX-ray14 (Data_Entry_2017_v2020.csv, official split lists) -> manifest rows."""
from __future__ import annotations

import numpy as np
import pandas as pd

from rv2.data import labels as lab
from rv2.data.adapters.base import ExclusionTracker, read_header, read_table
from rv2.data.config import IndexConfig
from rv2.data.schema import CHEXPERT_LABELS
from rv2.errors import UserError

# Columns of Data_Entry_2017*.csv read here (plus `Patient Gender` or `Patient Sex`).
NEEDED = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
          "View Position")


def index_nih(files, root, cfg: IndexConfig, *, progress=True):
    raw, test_list, trainval = None, None, None
    for f in files:
        if f.suffix == ".txt":
            names = {ln.strip() for ln in f.read_text().splitlines() if ln.strip()}
            if "test" in f.name.lower():
                test_list = names
            else:
                trainval = names
            continue
        cols = set(read_header(f))
        if {"Image Index", "Finding Labels"} <= cols:
            sex_col = "Patient Sex" if "Patient Sex" in cols else "Patient Gender"
            raw = read_table(f, NEEDED + (sex_col,), "nih")
        else:
            raise UserError(f"nih: {f} is not Data_Entry_2017*.csv (Image Index, Finding Labels, "
                             "...) nor test_list.txt / train_val_list.txt")
    if raw is None:
        raise UserError("nih: pass Data_Entry_2017_v2020.csv with --metadata")
    names = raw["Image Index"].astype(str)
    sex_col = "Patient Sex" if "Patient Sex" in raw else "Patient Gender"
    df = pd.DataFrame({
        "image_id": names.str.replace(r"\.png$", "", regex=True).to_numpy(),
        "path": ("images/" + names).to_numpy(),
        "patient_id": raw["Patient ID"].astype(str).to_numpy(),
        # one study per follow-up visit
        "study_id": (raw["Patient ID"].astype(str) + "_" + raw["Follow-up #"].astype(str))
        .to_numpy(),
        "view": [lab.normalize_view(v) for v in raw["View Position"].to_numpy(dtype=object)],
        "sex": [lab.normalize_sex(v) for v in raw[sex_col].to_numpy(dtype=object)],
        "age": pd.to_numeric(raw["Patient Age"], errors="coerce").to_numpy(dtype=float),
        "race": None,
        "source_labels": raw["Finding Labels"].astype(str).to_numpy(),
    })
    sets = [{lab.NIH_LABELS[x] for x in s.split("|") if x in lab.NIH_LABELS}
            for s in raw["Finding Labels"].astype(str)]
    labs = lab.labels_from_sets(sets, tuple(sorted(set(lab.NIH_LABELS.values()))))
    for c in CHEXPERT_LABELS:
        df[c] = labs[c].to_numpy()
    if test_list is not None or trainval is not None:
        # hash-based lookups (np.isin on object arrays is quadratic)
        df["split"] = np.where(names.isin(test_list or set()).to_numpy(), "test",
                               np.where(names.isin(trainval or set()).to_numpy(), "train", None))
        split_src = "test_list.txt / train_val_list.txt"
    else:
        df["split"] = cfg.default_split
        split_src = f"default_split={cfg.default_split}"
    return df, ExclusionTracker(df, "images in NIH Data_Entry CSV"), {"split_source": split_src}
