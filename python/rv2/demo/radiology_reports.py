"""Free-text reports and CheXpert-style labels, written from a phantom's parameters.

Reports follow the MIMIC-CXR free-text shape (FINAL REPORT, EXAMINATION,
INDICATION, COMPARISON, FINDINGS:, IMPRESSION:). Labels follow the CheXpert
labeler's conventions: 1.0 for a finding the report asserts, -1.0 for one it
calls possible, 0.0 for one it explicitly negates, blank (NaN) when not
mentioned; No Finding is 1.0 when nothing is asserted or possible (devices
aside), blank otherwise.
"""
from __future__ import annotations

import math

import numpy as np

from rv2.data.schema import CHEXPERT_LABELS
from rv2.demo.world import Case, _seed

NONDESCRIPTIVE = "___"


def _deg(sev: float) -> str:
    return "small" if sev < 0.55 else ("moderate" if sev < 0.8 else "large")


def _mild(sev: float) -> str:
    return "mild" if sev < 0.55 else ("moderate" if sev < 0.8 else "severe")


def _side_word(side: str, plural: bool = False) -> str:
    return {"right": "right", "left": "left", "bilateral": "bilateral"}[side]


def _phrases(case: Case, rng) -> tuple[list[str], list[str]]:
    """(impression sentences, findings sentences)."""
    imp, fnd = [], []
    for f in case.findings:
        hedge = "Possible " if f.uncertain else ""
        low = (lambda s: s[0].lower() + s[1:]) if f.uncertain else (lambda s: s)
        if f.name == "Cardiomegaly":
            imp.append(f"{_mild(f.severity).capitalize()} cardiomegaly.")
            fnd.append("The cardiac silhouette is enlarged.")
        elif f.name == "Pleural Effusion":
            if f.side == "bilateral":
                core = f"{_deg(f.severity).capitalize()} bilateral pleural effusions."
            else:
                core = f"{_deg(f.severity).capitalize()} {f.side} pleural effusion."
            imp.append(hedge + low(core) if f.uncertain else core)
            fnd.append("Blunting of the costophrenic angle" + ("s." if f.side == "bilateral" else "."))
        elif f.name == "Pneumothorax":
            core = f"{_deg(f.severity).capitalize()} {f.side} apical pneumothorax."
            imp.append(f"Cannot exclude {low(core)}" if f.uncertain else core)
            fnd.append(f"A pleural line is seen at the {f.side} apex.")
        elif f.name == "Consolidation":
            lobe = f"{f.side} lower lobe"
            if f.uncertain:
                imp.append(f"Possible {lobe} consolidation.")
            elif case.pneumonia:
                imp.append(f"{lobe.capitalize()} consolidation concerning for pneumonia.")
            else:
                imp.append(f"{lobe.capitalize()} consolidation.")
            fnd.append(f"Focal opacity in the {lobe}.")
        elif f.name == "Edema":
            core = f"{_mild(f.severity).capitalize()} pulmonary edema."
            imp.append(hedge + low(core) if f.uncertain else core)
            fnd.append("Perihilar haziness and interstitial markings.")
        elif f.name == "Atelectasis":
            core = ("Bibasilar atelectasis." if f.side == "bilateral"
                    else f"{f.side.capitalize()} basilar atelectasis.")
            imp.append(hedge + low(core) if f.uncertain else core)
            fnd.append("Linear opacity at the lung base" + ("s." if f.side == "bilateral" else "."))
        elif f.name == "Support Devices":
            imp.append("Right internal jugular catheter terminates in the SVC.")
            fnd.append("A right internal jugular line is present.")
    negs = _negations(case)
    if case.normal:
        imp = [str(rng.choice(["No acute cardiopulmonary process.",
                               "No acute intrathoracic abnormality.",
                               "No evidence of acute cardiopulmonary disease."]))]
        fnd = ["The lungs are clear.", "The cardiomediastinal silhouette is normal."]
    if negs:
        fnd.append(f"No {' or '.join(negs)}.")
    return imp, fnd


def _negations(case: Case) -> list[str]:
    words = []
    if not case.finding("Pleural Effusion"):
        words.append("pleural effusion")
    if not case.finding("Pneumothorax"):
        words.append("pneumothorax")
    return words


def impression(case: Case) -> str:
    """The impression text (one line); empty content for a non-descriptive report."""
    if case.nondescriptive:
        return NONDESCRIPTIVE
    rng = np.random.default_rng(_seed("report", case.case_id))
    return " ".join(_phrases(case, rng)[0])


def write_report(case: Case) -> str:
    """The whole MIMIC-style report of a case."""
    rng = np.random.default_rng(_seed("report", case.case_id))
    imp, fnd = _phrases(case, rng)
    exam = {"PA": "CHEST (PA AND LAT)", "AP": "CHEST (PORTABLE AP)",
            "LATERAL": "CHEST (PA AND LAT)"}[case.view]
    indication = str(rng.choice(["Shortness of breath.", "Cough, evaluate for pneumonia.",
                                 "Chest pain.", "Preoperative evaluation.", "Fever."]))
    lines = ["                                 FINAL REPORT",
             f" EXAMINATION:  {exam}", "",
             f" INDICATION:  ___{case.sex} with {indication[0].lower() + indication[1:]}", "",
             " COMPARISON:  ___", "",
             " FINDINGS:", "",
             " " + " ".join(fnd), "",
             " IMPRESSION:", "",
             " " + (NONDESCRIPTIVE if case.nondescriptive else " ".join(imp)), ""]
    return "\n".join(lines)


def labels(case: Case) -> dict[str, float]:
    """CheXpert labels (CHEXPERT_LABELS order) the report of `case` implies."""
    out = {name: math.nan for name in CHEXPERT_LABELS}
    asserted = False
    for f in case.findings:
        v = -1.0 if f.uncertain else 1.0
        out[f.name] = v
        if f.name != "Support Devices":
            asserted = True
        if f.name == "Cardiomegaly":
            out["Enlarged Cardiomediastinum"] = 1.0
        if f.name in ("Consolidation", "Edema", "Atelectasis"):
            out["Lung Opacity"] = max(v, out["Lung Opacity"]) if not math.isnan(out["Lung Opacity"]) else v
    if case.pneumonia:
        out["Pneumonia"] = 1.0
    for word in _negations(case):
        out["Pleural Effusion" if word == "pleural effusion" else "Pneumothorax"] = 0.0
    if not asserted:
        out["No Finding"] = 1.0
    return out
