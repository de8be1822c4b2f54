"""CheXpert (train.csv / valid.csv, with the CHEXPERT DEMO demographics table) -> manifest rows."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rv2.data import labels as lab
from rv2.data.adapters.base import ExclusionTracker, read_header, read_table
from rv2.data.config import IndexConfig
from rv2.data.schema import CHEXPERT_LABELS
from rv2.errors import UserError

# Columns of train.csv / valid.csv read here.
NEEDED = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA") + CHEXPERT_LABELS


def _chexpert_demographics(f: Path) -> pd.Series:
    demo = read_table(f)
    pid = "PATIENT" if "PATIENT" in demo else "patient_id"
    race = demo.get("PRIMARY_RACE", demo.get("race"))
    eth = demo.get("ETHNICITY", demo.get("ethnicity"))
    groups = [lab.chexpert_race_group(r, e) for r, e in
              zip(race.to_numpy(dtype=object),
                  (eth if eth is not None else pd.Series([None] * len(demo))).to_numpy(dtype=object))]
    return pd.Series(groups, index=demo[pid].astype(str).to_numpy()).groupby(level=0).first()


def index_chexpert(files, root, cfg: IndexConfig, *, progress=True):
    parts, demo = [], None
    for f in files:
        cols = set(read_header(f))
        if "Path" in cols and "Frontal/Lateral" in cols:
            parts.append(read_table(f, NEEDED, "chexpert"))
        elif "PRIMARY_RACE" in cols or ("PATIENT" in cols and "race" in {c.lower() for c in cols}):
            demo = _chexpert_demographics(f)
        else:
            raise UserError(f"chexpert: {f} is neither train.csv/valid.csv (Path, Sex, Age, "
                             "Frontal/Lateral, AP/PA, labels) nor the demographics table "
                             "(PATIENT, PRIMARY_RACE, ETHNICITY)")
    if not parts:
        raise UserError("chexpert: pass train.csv and/or valid.csv with --metadata")
    raw = pd.concat(parts, ignore_index=True)
    path = raw["Path"].astype(str)
    m = path.str.extract(r"(?P<split>train|valid|test)/(?P<patient>patient\d+)/(?P<study>study\d+)/")
    df = pd.DataFrame({
        "image_id": path.str.replace(r"^.*?(?=patient\d+/)", "", regex=True)
                        .str.replace(r"\.(jpg|png)$", "", regex=True).to_numpy(),
        "path": path.to_numpy(),
        "patient_id": m["patient"].to_numpy(),
        "study_id": (m["patient"] + "/" + m["study"]).to_numpy(),
        "sex": [lab.normalize_sex(v) for v in raw["Sex"].to_numpy(dtype=object)],
        "age": pd.to_numeric(raw["Age"], errors="coerce").to_numpy(dtype=float),
        "split": m["split"].map({"train": "train", "valid": "validate", "test": "test"})
                           .fillna(cfg.default_split).to_numpy(),
    })
    lateral = raw["Frontal/Lateral"].astype(str).str.lower().eq("lateral").to_numpy()
    appa = raw["AP/PA"].to_numpy(dtype=object)
    df["view"] = ["LATERAL" if lat else lab.normalize_view(v) for lat, v in zip(lateral, appa)]
    # CheXpert records unknown age as 0 in a few rows
    df.loc[df["age"] <= 0, "age"] = np.nan
    for c in CHEXPERT_LABELS:
        df[c] = pd.to_numeric(raw[c], errors="coerce").to_numpy(dtype=float)
    df["race"] = (demo.reindex(df["patient_id"].to_numpy()).to_numpy(dtype=object)
                  if demo is not None else None)
    return df, ExclusionTracker(df, "images in CheXpert CSV(s)"), {"race_source": "demographics table"
                                                        if demo is not None else None}
