"""MIMIC-CXR-JPG 2.0.0 + MIMIC-IV demographics + reports -> manifest rows.

Inputs (recognised by columns; see `rv2.data.index` for the command line):
metadata (dicom_id, subject_id, study_id, ViewPosition, StudyDate), labels
(chexpert or negbio: subject_id, study_id, 14 classes), patients (subject_id,
gender, anchor_age, anchor_year), admissions (subject_id, race or ethnicity),
optionally the official split (dicom_id, split).

Derived columns:
- age = anchor_age + (year of StudyDate - anchor_year) (MIMIC-CXR dates are
  shifted together with MIMIC-IV's anchor year); anchor_age without a date.
- race: per subject over all admissions (`labels.collapse_race_per_subject`):
  one consistent known group, else Other (mixed), else missing.
- impression: the IMPRESSION section (or a synonym such as CONCLUSION) by
  `rv2.data.report_sections.extract_impression(report, fallback=False)`; the full
  report text goes to `report`.

Paper recipe (`split_mode=paper`, `paper_exclusions`, `--views PA`): steps,
each counted in sidecar["exclusions"]: view filter; report missing;
impression section missing; non-descriptive impression (fewer than
`min_impression_words` words once de-identification placeholders are removed,
or matching one of `nondescriptive_patterns`, e.g. "see above", "no change");
sex or age missing; race outside Asian/Black/Hispanic/White. Then folders in
`test_folders` (p19) are the test split and the remaining patients are split
into train and validate by patient: `val_fraction` of them (rounded), drawn
by `numpy.random.default_rng(seed)` from the sorted subject ids.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from rv2.data import labels as lab
from rv2.data.adapters.base import (
    ExclusionTracker,
    read_header,
    read_table,
    require_columns,
)
from rv2.data.config import IndexConfig
from rv2.data.report_sections import extract_impression as _extract_impression
from rv2.data.schema import CHEXPERT_LABELS, STUDY_RACES
from rv2.errors import UserError

_PLACEHOLDER = re.compile(r"_{2,}|\bX{3,}[A-Za-z]*")
_WORD = re.compile(r"[A-Za-z]{2,}")


def classify_inputs(files: list[Path], labeler: str = "chexpert") -> dict[str, Path]:
    """Which file is which, by columns (labels: chexpert vs negbio by file name)."""
    roles: dict[str, list[Path]] = {}
    for f in files:
        cols = set(read_header(f))
        if {"dicom_id", "ViewPosition"} <= cols:
            role = "metadata"
        elif {"dicom_id", "split"} <= cols:
            role = "split"
        elif {"study_id", "No Finding"} <= cols:
            role = "labels"
        elif {"subject_id", "anchor_age"} <= cols:
            role = "patients"
        elif "subject_id" in cols and ("race" in cols or "ethnicity" in cols):
            role = "admissions"
        else:
            raise UserError(f"mimic: cannot tell what {f} is (columns {sorted(cols)[:8]}...); "
                             "expected the MIMIC-CXR-JPG metadata/chexpert/negbio/split CSVs or "
                             "MIMIC-IV patients/admissions")
        roles.setdefault(role, []).append(f)
    out: dict[str, Path] = {}
    for role, fs in roles.items():
        if role == "labels" and len(fs) > 1:
            pick = [f for f in fs if labeler in f.name.lower()]
            if len(pick) != 1:
                raise UserError(f"mimic: several label files {[str(f) for f in fs]}; name one "
                                 f"containing {labeler!r} or pass only one")
            fs = pick
        if len(fs) > 1:
            raise UserError(f"mimic: more than one {role} file: {[str(f) for f in fs]}")
        out[role] = fs[0]
    missing = [r for r in ("metadata", "patients", "admissions") if r not in out]
    if missing:
        raise UserError(f"mimic: missing input(s) {missing}; pass mimic-cxr-2.0.0-metadata.csv, "
                         "mimic-cxr-2.0.0-chexpert.csv, patients.csv and admissions.csv "
                         "with --metadata")
    return out


def image_relpath(subject_id: int, study_id: int, dicom_id: str) -> str:
    s = str(subject_id)
    return f"files/p{s[:2]}/p{s}/s{study_id}/{dicom_id}.jpg"


def report_relpath(subject_id: int, study_id: int) -> str:
    s = str(subject_id)
    return f"files/p{s[:2]}/p{s}/s{study_id}.txt"


def is_nondescriptive(impression: str | None, min_words: int, patterns: list[str]) -> bool:
    if impression is None:
        return True
    text = _PLACEHOLDER.sub(" ", impression).strip()
    if len(_WORD.findall(text)) < min_words:
        return True
    low = " ".join(text.lower().split())
    return any(re.fullmatch(p, low) for p in patterns)


def extract_impression(report: str | None) -> str | None:
    return _extract_impression(report, fallback=False)


def split_by_patient(subjects: np.ndarray, fraction: float, seed: int) -> set:
    """The validation subjects: round(fraction * n) of the sorted unique ids, seeded."""
    uniq = np.array(sorted(set(subjects.tolist())))
    n_val = int(round(fraction * len(uniq)))
    rng = np.random.default_rng(seed)
    return set(rng.permutation(uniq)[:n_val].tolist())


def index_mimic(files: list[Path], root: Path | None, cfg: IndexConfig, *, progress: bool = True):
    from tqdm.auto import tqdm

    roles = classify_inputs(files, cfg.mimic_labeler)
    meta = read_table(roles["metadata"], ("dicom_id", "subject_id", "study_id", "ViewPosition"),
                      "mimic", dtype={"dicom_id": str})
    df = pd.DataFrame({
        "image_id": meta["dicom_id"].astype(str).to_numpy(),
        "subject": meta["subject_id"].astype("int64").to_numpy(),
        "study": meta["study_id"].astype("int64").to_numpy(),
        "view": [lab.normalize_view(v) for v in meta.get("ViewPosition", pd.Series(
            [None] * len(meta))).to_numpy(dtype=object)],
        "study_year": (pd.to_numeric(meta["StudyDate"], errors="coerce") // 10000).to_numpy()
        if "StudyDate" in meta else np.full(len(meta), np.nan),
    })
    df["path"] = [image_relpath(s, t, d) for s, t, d in
                  zip(df["subject"], df["study"], df["image_id"])]
    df["patient_id"] = df["subject"].astype(str)
    df["study_id"] = df["study"].astype(str)

    # labels per study
    if "labels" in roles:
        labs = read_table(roles["labels"], ("study_id",) + CHEXPERT_LABELS, "mimic")
        labs = labs.drop_duplicates("study_id").set_index("study_id")
        got = labs.reindex(df["study"].to_numpy())
        for c in CHEXPERT_LABELS:
            df[c] = got[c].to_numpy(dtype=float)
    else:
        for c in CHEXPERT_LABELS:
            df[c] = np.nan

    # demographics
    pats = read_table(roles["patients"], ("subject_id", "anchor_age"), "mimic").drop_duplicates("subject_id").set_index("subject_id")
    p = pats.reindex(df["subject"].to_numpy())
    df["sex"] = [lab.normalize_sex(v) for v in p["gender"].to_numpy(dtype=object)] \
        if "gender" in p else None
    anchor_age = pd.to_numeric(p["anchor_age"], errors="coerce").to_numpy(dtype=float)
    anchor_year = (pd.to_numeric(p["anchor_year"], errors="coerce").to_numpy(dtype=float)
                   if "anchor_year" in p else np.full(len(df), np.nan))
    shift = df["study_year"].to_numpy(dtype=float) - anchor_year
    df["age"] = np.where(np.isnan(shift), anchor_age, anchor_age + shift)
    adm = read_table(roles["admissions"], ("subject_id",), "mimic")
    if "race" not in adm and "ethnicity" not in adm:
        require_columns(adm, roles["admissions"], ("subject_id", "race"), "mimic")
    race_col = "race" if "race" in adm else "ethnicity"
    race = lab.collapse_race_per_subject(adm, race_col)
    df["race"] = race.reindex(df["subject"].to_numpy()).to_numpy(dtype=object)
    df["race"] = df["race"].where(df["race"].notna(), None)

    flow = ExclusionTracker(df, "images in MIMIC-CXR-JPG metadata")
    views = lab.parse_views(cfg.views)
    if views is not None:
        df = flow.keep(df["view"].isin(sorted(views)).to_numpy(), f"view not in {sorted(views)}")

    # reports of the remaining studies
    rroot = Path(cfg.reports_root) if cfg.reports_root else root
    reports: dict[int, str | None] = {}
    if rroot is not None:
        studies = df[["subject", "study"]].drop_duplicates().to_numpy()
        for subj, study in tqdm(studies, desc="read reports", unit="report",
                                disable=not progress):
            f = rroot / report_relpath(int(subj), int(study))
            try:
                reports[int(study)] = f.read_text(errors="replace")
            except (FileNotFoundError, IsADirectoryError):
                reports[int(study)] = None
    df["report"] = [reports.get(int(s)) for s in df["study"]]
    imp_cache = {s: extract_impression(r) for s, r in reports.items()}
    df["impression"] = [imp_cache.get(int(s)) for s in df["study"]]

    if cfg.paper_exclusions:
        if rroot is None:
            raise UserError("mimic: the paper's exclusions read the reports; pass --root (or "
                             "set reports_root) or turn them off with --set "
                             "paper_exclusions=false")
        df = flow.keep(df["report"].notna().to_numpy(), "report missing")
        df = flow.keep(df["impression"].notna().to_numpy(), "impression section missing")
        nd = np.array([is_nondescriptive(t, cfg.min_impression_words, cfg.nondescriptive_patterns)
                       for t in df["impression"].to_numpy(dtype=object)], dtype=bool)
        df = flow.keep(~nd, "non-descriptive impression")
        df = flow.keep((df["sex"].notna() & df["age"].notna()).to_numpy(), "sex or age missing")
        df = flow.keep(df["race"].isin(STUDY_RACES).to_numpy(),
                       "race outside Asian/Black/Hispanic/White")

    split_info: dict = {"mode": cfg.split_mode}
    if cfg.split_mode == "official":
        if "split" not in roles:
            raise UserError("mimic: split_mode=official needs mimic-cxr-2.0.0-split.csv")
        sp = read_table(roles["split"], dtype={"dicom_id": str}).drop_duplicates("dicom_id")
        got = sp.set_index("dicom_id")["split"].reindex(df["image_id"].to_numpy())
        df["split"] = got.to_numpy(dtype=object)
        df = flow.keep(df["split"].notna().to_numpy(), "not in the official split file")
    else:
        folder = df["subject"].astype(str).str[:2].map(lambda s: f"p{s}")
        is_test = folder.isin(cfg.test_folders).to_numpy()
        val_subjects = split_by_patient(df.loc[~is_test, "subject"].to_numpy(),
                                        cfg.val_fraction, cfg.seed)
        df["split"] = np.where(is_test, "test",
                               np.where(df["subject"].isin(val_subjects), "validate", "train"))
        split_info.update({"test_folders": list(cfg.test_folders),
                           "val_fraction": cfg.val_fraction, "seed": cfg.seed})
    split_info["patients"] = {k: int(v) for k, v in
                              df.groupby("split")["subject"].nunique().items()}
    flow.df = df
    extra = {"split": split_info,
             "race_rule": "per subject over MIMIC-IV admissions: unknown/declined ignored; one "
                          "consistent group -> that group; several groups -> Other; none -> "
                          "missing",
             "age_rule": "anchor_age + (StudyDate year - anchor_year)",
             "impression_rule": "IMPRESSION section (or synonym) via "
                                "rv2.data.report_sections.extract_impression(fallback=False)",
             "labeler": roles["labels"].name if "labels" in roles else None}
    df = df.drop(columns=["subject", "study", "study_year"])
    return df, flow, extra
