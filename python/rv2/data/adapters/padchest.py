"""PadChest (the 160K labels CSV) -> manifest rows; findings by label-text patterns."""
from __future__ import annotations

import ast

import pandas as pd

from rv2.data import labels as lab
from rv2.data.adapters.base import ExclusionTracker, na_to_none, read_table
from rv2.data.config import IndexConfig
from rv2.data.schema import CHEXPERT_LABELS
from rv2.errors import UserError


def parse_padchest_labels(s) -> list[str] | None:
    """The Labels cell (a Python list literal) as stripped lower-case strings; None if absent."""
    if s is None or (isinstance(s, float) and s != s):
        return None
    try:
        items = ast.literal_eval(str(s))
    except (ValueError, SyntaxError):
        return None
    if not isinstance(items, (list, tuple)):
        return None
    return [str(x).strip().lower() for x in items if str(x).strip()]


def padchest_findings(items: list[str] | None) -> set[str] | None:
    if items is None:
        return None
    out = {c for c, pat in lab.PADCHEST_PATTERNS.items() if any(pat.search(x) for x in items)}
    if items == ["normal"]:
        out.add("No Finding")
    return out


def index_padchest(files, root, cfg: IndexConfig, *, progress=True):
    if len(files) != 1:
        raise UserError("padchest: pass the one PADCHEST_chest_x_ray_images_labels_160K CSV")
    raw = read_table(files[0])
    need = {"ImageID", "ImageDir", "PatientID", "Labels", "Projection"}
    if not need <= set(raw.columns):
        raise UserError(f"padchest: {files[0]} lacks columns {sorted(need - set(raw.columns))}")
    birth = pd.to_numeric(raw.get("PatientBirth"), errors="coerce")
    year = pd.to_numeric(raw.get("StudyDate_DICOM"), errors="coerce") // 10000
    # many rows share a Labels string (a third are ['normal']): parse each distinct one once
    cells = raw["Labels"].to_numpy(dtype=object)
    cache: dict = {}
    sets = []
    for cell in cells:
        key = None if cell is None or (isinstance(cell, float) and cell != cell) else cell
        if key not in cache:
            cache[key] = padchest_findings(parse_padchest_labels(key))
        sets.append(cache[key])
    labs = lab.labels_from_sets(sets, tuple(lab.PADCHEST_PATTERNS) + ("No Finding",))
    imgdir = pd.to_numeric(raw["ImageDir"], errors="coerce").astype("Int64").astype(str)
    df = pd.DataFrame({
        "image_id": raw["ImageID"].astype(str).to_numpy(),
        "path": (imgdir + "/" + raw["ImageID"].astype(str)).to_numpy(),
        "patient_id": raw["PatientID"].astype(str).to_numpy(),
        "study_id": raw["StudyID"].astype(str).to_numpy() if "StudyID" in raw else None,
        "view": [lab.normalize_view(v) for v in raw["Projection"].to_numpy(dtype=object)],
        "sex": [lab.normalize_sex(v) for v in raw["PatientSex_DICOM"].to_numpy(dtype=object)],
        "age": (year - birth).to_numpy(dtype=float),
        "race": None,
        "split": cfg.default_split,
        "report": [na_to_none(v) for v in raw["Report"].to_numpy(dtype=object)]
        if "Report" in raw else None,
        "source_labels": raw["Labels"].astype("string").to_numpy(),
        "label_method": raw["MethodLabel"].astype("string").to_numpy()
        if "MethodLabel" in raw else None,
    })
    for c in CHEXPERT_LABELS:
        df[c] = labs[c].to_numpy()
    # COSTAL / EXCLUDE projections are not chest views of the lungs' usual kind: OTHER
    return df, ExclusionTracker(df, "images in PadChest CSV"), {
        "labels_rule": "Labels list items matched per class (rv2.data.labels.PADCHEST_PATTERNS); "
                       "No Finding = exactly ['normal']; unparsable Labels -> all NaN"}
