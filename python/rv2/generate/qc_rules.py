"""QC rules: does a generated image agree with its prompt's demographics?

sex: predicted sex (P(female) >= 0.5) equals the requested sex.
race: the argmax over (Asian, Black, White) equals the requested race; a
      Hispanic request cannot be judged by the 3-class model and is recorded
      as unchecked (it passes, as in the authors' code).
age: |predicted - requested| <= tolerance (16 years by default, as the authors).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from rv2.models.qc_networks import RACE_CLASSES

ATTRIBUTES = ("sex", "race", "age")
DEFAULT_AGE_TOLERANCE = 16.0  # years: the authors' code (the paper: the age model's error)


def sex_prediction(p_female: float) -> str:
    """The sex the QC reads from P(female)."""
    return "F" if p_female >= 0.5 else "M"


def race_prediction(probs) -> str:
    """The race the QC reads: the most probable of RACE_CLASSES."""
    return RACE_CLASSES[int(np.argmax(np.asarray(probs, dtype=np.float64)))]


def judge(p_female: np.ndarray, race_probs: np.ndarray, age_pred: np.ndarray,
          sex: Sequence[str], race: Sequence[str], age: Sequence[float],
          age_tolerance: float = DEFAULT_AGE_TOLERANCE) -> list[dict]:
    """One record per image: predictions, per-attribute verdicts, pass, reasons."""
    out = []
    for i in range(len(sex)):
        pf = float(p_female[i])
        probs = np.asarray(race_probs[i], dtype=np.float64)
        sex_pred = sex_prediction(pf)
        race_pred = race_prediction(probs)
        sex_ok = sex_pred == sex[i]
        if race[i] in RACE_CLASSES:
            race_ok: bool | None = race_pred == race[i]
        else:
            race_ok = None  # Hispanic: not judgeable by the 3-class model
        age_ok = bool(abs(float(age_pred[i]) - float(age[i])) <= age_tolerance)
        reasons = [a for a, ok in (("sex", sex_ok), ("race", race_ok), ("age", age_ok)) if ok is False]
        out.append({
            "qc_p_female": pf, "qc_sex_pred": sex_pred,
            **{f"qc_p_{c.lower()}": float(probs[j]) for j, c in enumerate(RACE_CLASSES)},
            "qc_race_pred": race_pred, "qc_age_pred": float(age_pred[i]),
            "qc_sex_ok": bool(sex_ok), "qc_race_ok": race_ok, "qc_race_checked": race_ok is not None,
            "qc_age_ok": age_ok, "qc_pass": not reasons, "qc_fail_reasons": ";".join(reasons),
        })
    return out


def unjudged(n: int) -> list[dict]:
    """Records for `n` images when QC is off: every image passes, predictions missing."""
    nan = float("nan")
    return [{"qc_p_female": nan, "qc_sex_pred": None, "qc_p_asian": nan, "qc_p_black": nan,
             "qc_p_white": nan, "qc_race_pred": None, "qc_age_pred": nan, "qc_sex_ok": None,
             "qc_race_ok": None, "qc_race_checked": False, "qc_age_ok": None, "qc_pass": True,
             "qc_fail_reasons": ""} for _ in range(n)]
