"""The manifest contract shared by every stage.

A manifest is a Parquet table with one row per image. Label columns carry
1.0 (positive), 0.0 (negative), -1.0 (uncertain) or NaN (not mentioned), as
the source says; the uncertain-label policy is applied when training, and is
recorded in the manifest's sidecar.
"""
from __future__ import annotations

# The 14 CheXpert classes, in CheXpert's order: the classifier's output order.
CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)

# The 8 labels shared by all five test sets (Effusion = Pleural Effusion).
EVAL_LABELS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion", "Pneumonia",
    "Pneumothorax", "No Finding",
)

SEXES: tuple[str, ...] = ("F", "M")
RACES: tuple[str, ...] = ("Asian", "Black", "Hispanic", "White", "Other")
STUDY_RACES: tuple[str, ...] = ("Asian", "Black", "Hispanic", "White")
AGE_BINS: tuple[str, ...] = ("<18", "18-40", "40-60", "60-80", "80+")
# Ages (years) a manifest or prompt may hold; outside it is a data error.
AGE_RANGE: tuple[int, int] = (0, 120)
VIEWS: tuple[str, ...] = ("PA", "AP", "LATERAL", "LL", "AP_HORIZONTAL", "OTHER")

ID_COLUMNS: tuple[str, ...] = ("image_id", "path", "patient_id", "study_id", "dataset", "view",
                               "sex", "age", "age_bin", "race", "split")
TEXT_COLUMNS: tuple[str, ...] = ("impression", "report")
REQUIRED_COLUMNS: tuple[str, ...] = ID_COLUMNS + CHEXPERT_LABELS

UNCERTAIN_POLICIES: tuple[str, ...] = ("ignore", "zeros", "ones")


def age_bin(age: float | None) -> str | None:
    """Left-closed bins: <18, [18,40), [40,60), [60,80), >=80; None for a missing age."""
    if age is None or age != age:  # NaN
        return None
    if age < 18:
        return "<18"
    if age < 40:
        return "18-40"
    if age < 60:
        return "40-60"
    if age < 80:
        return "60-80"
    return "80+"
