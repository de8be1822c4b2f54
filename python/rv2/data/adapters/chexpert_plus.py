"""CheXpert Plus (df_chexpert_plus_240401.csv, optional label CSV) -> manifest rows."""
from __future__ import annotations

import numpy as np
import pandas as pd

from rv2.data import labels as lab
from rv2.data.adapters.base import ExclusionTracker, na_to_none, read_header, read_table
from rv2.data.config import IndexConfig
from rv2.data.schema import CHEXPERT_LABELS
from rv2.errors import UserError


def index_chexpert_plus(files, root, cfg: IndexConfig, *, progress=True):
    main, extra_labels = None, None
    for f in files:
        cols = set(read_header(f))
        if "path_to_image" in cols and ("section_impression" in cols or "deid_patient_id" in cols):
            main = read_table(f)
        elif "path_to_image" in cols and set(CHEXPERT_LABELS) & cols:
            extra_labels = read_table(f).drop_duplicates("path_to_image").set_index("path_to_image")
        else:
            raise UserError(f"chexpert-plus: {f} is not df_chexpert_plus_*.csv (path_to_image, "
                             "deid_patient_id, section_impression, ...) nor a label CSV keyed by "
                             "path_to_image")
    if main is None:
        raise UserError("chexpert-plus: pass df_chexpert_plus_240401.csv with --metadata")
    path = main["path_to_image"].astype(str)
    study = path.str.extract(r"(patient\d+/study\d+)/")[0]
    df = pd.DataFrame({
        "image_id": path.str.replace(r"\.(jpg|png)$", "", regex=True).to_numpy(),
        "path": path.to_numpy(),
        "patient_id": main["deid_patient_id"].astype(str).to_numpy() if "deid_patient_id" in main
        else path.str.extract(r"(patient\d+)")[0].to_numpy(),
        "study_id": study.to_numpy(),
        "sex": [lab.normalize_sex(v) for v in main.get("sex", pd.Series([None] * len(main)))
                .to_numpy(dtype=object)],
        "age": pd.to_numeric(main.get("age", pd.Series([np.nan] * len(main))),
                             errors="coerce").to_numpy(dtype=float),
    })
    fl = main.get("frontal_lateral", pd.Series([None] * len(main))).astype(str).str.lower()
    df["view"] = ["LATERAL" if f == "lateral" else lab.normalize_view(v)
                  for f, v in zip(fl, main.get("ap_pa", pd.Series([None] * len(main)))
                                  .to_numpy(dtype=object))]
    df["race"] = [lab.chexpert_race_group(r, e) for r, e in zip(
        main.get("race", pd.Series([None] * len(main))).to_numpy(dtype=object),
        main.get("ethnicity", pd.Series([None] * len(main))).to_numpy(dtype=object))]
    sp = main.get("split", pd.Series([None] * len(main))).astype("string").str.lower()
    df["split"] = sp.map({"train": "train", "valid": "validate", "validate": "validate",
                          "val": "validate", "test": "test"}).fillna(cfg.default_split).to_numpy()
    df["impression"] = [na_to_none(v) for v in main.get("section_impression", pd.Series(
        [None] * len(main))).to_numpy(dtype=object)]
    if "report" in main:
        df["report"] = [na_to_none(v) for v in main["report"].to_numpy(dtype=object)]
    else:
        secs = [c for c in main.columns if c.startswith("section_")]
        df["report"] = ["\n\n".join(f"{c[8:].upper()}: {main.at[i, c]}" for c in secs
                                    if na_to_none(main.at[i, c]) is not None) or None
                        for i in range(len(main))]
    src = main if set(CHEXPERT_LABELS) <= set(main.columns) else (
        extra_labels.reindex(path.to_numpy()).reset_index(drop=True)
        if extra_labels is not None else None)
    for c in CHEXPERT_LABELS:
        df[c] = (pd.to_numeric(src[c], errors="coerce").to_numpy(dtype=float)
                 if src is not None and c in src else np.nan)
    return df, ExclusionTracker(df, "images in CheXpert Plus CSV"), {}
