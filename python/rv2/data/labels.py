"""Harmonization of each source's views, sexes, races and findings onto the manifest schema.

Label columns carry the 14 CheXpert classes. Sources that label with a finding
list (NIH, PadChest, VinDr, OpenI MeSH) fill only the classes they define
(see `shared/reference/datasets.md`): 1 where the finding is present, 0 where
it is not; the other classes stay NaN. CheXpert/MIMIC keep the labeler's
values (1, 0, -1, blank).

No Finding rule (`apply_no_finding_rule`), both directions:
- where No Finding = 1, findings left blank (NaN) become 0; explicit 1/-1
  values are never overwritten, but counted as conflicts in the sidecar;
- where a finding is positive (1) and No Finding is blank, No Finding becomes 0:
  the CheXpert labeler leaves No Finding blank, never 0, on abnormal studies,
  and without these negatives No Finding AUROC and the underdiagnosis rate
  (the FPR of "No Finding") are undefined.
Support Devices is exempt both ways (the CheXpert labeler allows No Finding
together with a device).
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from rv2.data.schema import CHEXPERT_LABELS
from rv2.errors import UserError

FINDINGS = tuple(c for c in CHEXPERT_LABELS if c != "No Finding")
NO_FINDING_EXEMPT = ("Support Devices",)

# NIH ChestX-ray14 "Finding Labels" names -> CheXpert columns (the 8 shared labels only).
NIH_LABELS: dict[str, str] = {
    "Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly",
    "Consolidation": "Consolidation", "Edema": "Edema", "Effusion": "Pleural Effusion",
    "Pneumonia": "Pneumonia", "Pneumothorax": "Pneumothorax", "No Finding": "No Finding",
}

# VinDr-CXR class names (Kaggle train.csv class_name or PhysioNet column) -> CheXpert columns.
VINDR_LABELS: dict[str, str] = {
    "Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly",
    "Consolidation": "Consolidation", "Pleural effusion": "Pleural Effusion",
    "Pneumothorax": "Pneumothorax", "No finding": "No Finding",
    # only in PhysioNet image_labels (the Kaggle file has neither)
    "Edema": "Edema", "Pneumonia": "Pneumonia",
}
VINDR_KAGGLE_ONLY_MISSING = ("Edema", "Pneumonia")

# PadChest: a label item matching the pattern makes the class positive.
PADCHEST_PATTERNS: dict[str, re.Pattern] = {
    "Atelectasis": re.compile(r"atelectasis"),
    "Cardiomegaly": re.compile(r"cardiomegaly"),
    "Consolidation": re.compile(r"consolidation"),
    "Edema": re.compile(r"edema"),
    # "pericardial effusion" is not a pleural effusion
    "Pleural Effusion": re.compile(r"^(?!.*pericardial).*effusion"),
    "Pneumonia": re.compile(r"pneumonia"),
    "Pneumothorax": re.compile(r"pneumothorax"),
}

# OpenI MeSH major terms (first component, lower case) -> CheXpert columns; "normal" = No Finding.
OPENI_MESH: dict[str, str] = {
    "pulmonary atelectasis": "Atelectasis", "atelectasis": "Atelectasis",
    "cardiomegaly": "Cardiomegaly", "consolidation": "Consolidation",
    "pulmonary edema": "Edema", "edema": "Edema",
    "pleural effusion": "Pleural Effusion", "pneumonia": "Pneumonia",
    "pneumothorax": "Pneumothorax",
}
OPENI_LABELS = tuple(sorted(set(OPENI_MESH.values()))) + ("No Finding",)


# ------------------------------------------------------------------ views, sex, age

def normalize_view(v) -> str | None:
    """A source's view string to PA, AP, LATERAL, LL, AP_HORIZONTAL or OTHER; None if blank."""
    if v is None or (isinstance(v, float) and v != v):
        return None
    s = str(v).strip().upper().replace("-", " ").replace("_", " ")
    if not s or s in ("NAN", "NONE", "UNK", "UNKNOWN"):
        return None
    s = " ".join(s.split())
    table = {
        "PA": "PA", "POSTEROANTERIOR": "PA", "PA LAT": "PA",
        "AP": "AP", "ANTEROPOSTERIOR": "AP", "AP AXIAL": "AP",
        "AP HORIZONTAL": "AP_HORIZONTAL", "AP SUPINE": "AP_HORIZONTAL",
        "LATERAL": "LATERAL", "L": "LATERAL", "LAT": "LATERAL", "RL": "LATERAL",
        "RLAT": "LATERAL", "LARGE LATERAL": "LATERAL", "LL": "LL", "LLAT": "LL", "LEFT LATERAL": "LL",
    }
    return table.get(s, "OTHER")


def normalize_sex(v) -> str | None:
    if v is None or (isinstance(v, float) and v != v):
        return None
    s = str(v).strip().upper()
    if s in ("F", "FEMALE", "WOMAN"):
        return "F"
    if s in ("M", "MALE", "MAN"):
        return "M"
    return None


def parse_views(spec: str | None) -> set[str] | None:
    """`--views` value: 'all' (None), or a comma list of view names."""
    if spec is None or str(spec).strip().lower() in ("", "all"):
        return None
    views = set()
    for part in str(spec).split(","):
        v = normalize_view(part)
        if v is None or (v == "OTHER" and part.strip().upper() != "OTHER"):
            raise UserError(f"--views: {part!r} is not a view (use PA, AP, LATERAL, LL, "
                             "AP_HORIZONTAL, OTHER or all)")
        views.add(v)
    return views


# ------------------------------------------------------------------ race

def mimic_race_group(value) -> str | None:
    """One MIMIC-IV admissions race/ethnicity string to a group; None if unknown/declined.

    WHITE* -> White, BLACK* -> Black, ASIAN* -> Asian, HISPANIC* / *LATINO* /
    SOUTH AMERICAN -> Hispanic; UNKNOWN, UNABLE TO OBTAIN, PATIENT DECLINED
    TO ANSWER and blanks -> None; anything else (AMERICAN INDIAN..., NATIVE
    HAWAIIAN..., MULTIPLE RACE/ETHNICITY, OTHER, PORTUGUESE, ...) -> Other.
    """
    if value is None or (isinstance(value, float) and value != value):
        return None
    s = str(value).strip().upper()
    if not s or s in ("UNKNOWN", "UNKNOWN/NOT SPECIFIED", "UNABLE TO OBTAIN",
                      "PATIENT DECLINED TO ANSWER", "DECLINED TO ANSWER"):
        return None
    if s.startswith("WHITE"):
        return "White"
    if s.startswith("BLACK"):
        return "Black"
    if s.startswith("ASIAN"):
        return "Asian"
    if s.startswith("HISPANIC") or "LATINO" in s or s == "SOUTH AMERICAN":
        return "Hispanic"
    return "Other"


def collapse_race_per_subject(admissions: pd.DataFrame, race_col: str) -> pd.Series:
    """subject_id -> race group, over all admissions of a subject.

    Rule: unknown/declined admissions are ignored; a subject whose remaining
    admissions all fall in one group gets that group; a subject with
    admissions in two or more different groups gets "Other" (inconsistent
    record, outside the four study groups); a subject with none is missing.
    """
    groups = admissions[race_col].map(mimic_race_group)
    g = pd.DataFrame({"subject_id": admissions["subject_id"].to_numpy(),
                      "group": groups.to_numpy()}).dropna()
    distinct = g.groupby("subject_id")["group"].agg(lambda s: sorted(set(s)))
    return distinct.map(lambda gs: gs[0] if len(gs) == 1 else "Other")


def chexpert_race_group(race, ethnicity=None) -> str | None:
    """CheXpert demographics (PRIMARY_RACE, ETHNICITY) / CheXpert Plus (race, ethnicity).

    Hispanic when the ethnicity (or the race string) says Hispanic/Latino and
    not "non-Hispanic"; else White, Black (or African American), Asian by the
    race string; unknown/refused/blank -> None; others -> Other.
    """
    def text(v):
        return "" if v is None or (isinstance(v, float) and v != v) else str(v).strip().lower()

    r, e = text(race), text(ethnicity)
    hisp = re.compile(r"(?<!non-)(?<!non )\b(hispanic|latino|latina)\b")
    if hisp.search(e) or hisp.search(r):
        return "Hispanic"
    if not r or r in ("unknown", "patient refused", "declined", "not reported", "nan",
                      "unknown/not specified", "patient declined to answer"):
        return None
    if r.startswith("white"):
        return "White"
    if r.startswith("black") or "african american" in r:
        return "Black"
    if r.startswith("asian"):
        return "Asian"
    return "Other"


# ------------------------------------------------------------------ labels

def empty_labels(n: int) -> pd.DataFrame:
    return pd.DataFrame({c: np.full(n, np.nan) for c in CHEXPERT_LABELS})


def labels_from_sets(findings: list[set[str]], defined: tuple[str, ...]) -> pd.DataFrame:
    """Binary labels (1/0) for the classes in `defined` from per-row sets of class names;
    NaN for the other classes and for rows whose set is None (unlabelled)."""
    out = empty_labels(len(findings))
    for c in defined:
        col = np.array([np.nan if s is None else float(c in s) for s in findings])
        out[c] = col
    return out


def apply_no_finding_rule(labels: pd.DataFrame) -> dict:
    """In place: where No Finding == 1, blank findings -> 0; where a finding == 1, a blank
    No Finding -> 0. Returns counts for the sidecar."""
    nf = labels["No Finding"].to_numpy() == 1.0
    filled, conflicts = 0, 0
    for c in FINDINGS:
        if c in NO_FINDING_EXEMPT or c not in labels:
            continue
        v = labels[c].to_numpy(dtype=float, copy=True)
        blank = nf & np.isnan(v)
        conflicts += int((nf & ((v == 1.0) | (v == -1.0))).sum())
        filled += int(blank.sum())
        v[blank] = 0.0
        labels[c] = v
    findings = [c for c in FINDINGS if c not in NO_FINDING_EXEMPT and c in labels]
    abnormal = (labels[findings].to_numpy(dtype=float) == 1.0).any(axis=1) if findings else \
        np.zeros(len(labels), bool)
    nf_all = labels["No Finding"].to_numpy(dtype=float, copy=True)
    nf_blank = abnormal & np.isnan(nf_all)
    nf_all[nf_blank] = 0.0
    labels["No Finding"] = nf_all
    return {"rows_with_no_finding": int(nf.sum()), "blank_findings_set_to_0": filled,
            "positive_or_uncertain_findings_kept_despite_no_finding": conflicts,
            "blank_no_finding_set_to_0_on_positive_finding": int(nf_blank.sum())}
