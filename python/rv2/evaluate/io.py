"""Reading and checking the inputs of `rv2 evaluate` / `rv2 compare`.

- Predictions: Parquet with `image_id` and one float column per label, named
  as rv2.data.schema.CHEXPERT_LABELS (what `rv2 predict` writes).
- Manifest: Parquet with `image_id`, the label columns (1 positive, 0 negative,
  -1 uncertain, NaN not mentioned), `sex`, `race` and `age_bin` (or `age`),
  and `patient_id` for the patient bootstrap. The label policy
  (rv2.data.label_policy; default uncertain=0,blank=0, or the one the model
  was trained with) maps -1 and blank to 0, 1 or "left out of that label".
- Thresholds: `thresholds.json` of the model folder, or any file of the same
  form {"labels": [...], "thresholds": {label: float}, "rule": ">=" or ">",
  "label_policy": "uncertain=...,blank=..."}.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rv2.data.demographics import check_demographics
from rv2.data.label_policy import LabelPolicy
from rv2.data.manifest import ManifestError, check_labels
from rv2.data.manifest import read_manifest as read_any
from rv2.data.schema import age_bin as _age_bin
from rv2.errors import UserError

THRESHOLDS_FILE = "thresholds.json"
MODEL_CONFIG_FILE = "model_config.json"


class EvaluationInputError(UserError):
    """An input file that cannot be evaluated as given; the message says what to fix."""


def _read_parquet(path, what: str):
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise EvaluationInputError(f"{what} not found: {p}")
    try:
        return pd.read_parquet(p)
    except Exception as exc:
        raise EvaluationInputError(f"{what} {p}: not a readable Parquet file: {exc}") from exc


def _ids(df, path, what: str) -> np.ndarray:
    if "image_id" not in df.columns:
        raise EvaluationInputError(f"{what} {path}: no `image_id` column (columns: "
                                   f"{list(df.columns)[:20]})")
    ids = df["image_id"].astype("string")
    if ids.isna().any():
        raise EvaluationInputError(f"{what} {path}: {int(ids.isna().sum())} empty image_id(s)")
    dup = ids[ids.duplicated()]
    if len(dup):
        raise EvaluationInputError(f"{what} {path}: image_id is not unique ({len(dup)} "
                                   f"duplicates, e.g. {dup.unique()[:5].tolist()})")
    return ids.to_numpy(dtype=object)


def read_manifest(path, split: str | None = None):
    """The manifest's rows (of `split` if given) with the columns evaluation needs."""
    try:
        df = read_any(path, validate_values=False, required=())
    except ManifestError as exc:
        raise EvaluationInputError(str(exc)) from exc
    _ids(df, path, "manifest")
    if split is not None:
        if "split" not in df.columns:
            raise EvaluationInputError(f"manifest {path}: no `split` column to select {split!r}")
        df = df[df["split"].astype("string") == split].reset_index(drop=True)
        if not len(df):
            raise EvaluationInputError(f"manifest {path}: no rows with split == {split!r}")
    for c in ("sex", "race"):
        if c not in df.columns:
            raise EvaluationInputError(f"manifest {path}: missing demographic column `{c}`")
    if "age_bin" not in df.columns and "age" not in df.columns:
        raise EvaluationInputError(f"manifest {path}: needs `age_bin` or `age`")
    # Subgroups are the schema's values: a `Female` would make every F subgroup empty.
    df = check_demographics(df, f"manifest {path}")
    if "age_bin" not in df.columns:
        df = df.assign(age_bin=[_age_bin(a) for a in df["age"]])
    return df


def read_predictions(path, manifest, labels: Sequence[str], manifest_path="manifest"
                     ) -> np.ndarray:
    """(n, L) float64 scores in the manifest's row order; strict id and value checks."""
    df = _read_parquet(path, "predictions")
    ids = _ids(df, path, "predictions")
    missing_cols = [c for c in labels if c not in df.columns]
    if missing_cols:
        raise EvaluationInputError(f"predictions {path}: missing label column(s) {missing_cols}; "
                                   "columns must be named exactly as the CheXpert labels")
    man_ids = manifest["image_id"].astype("string").to_numpy(dtype=object)
    pos = {k: i for i, k in enumerate(ids)}
    not_pred = [k for k in man_ids if k not in pos]
    man_set = set(man_ids)
    not_man = [k for k in ids if k not in man_set]
    if not_pred or not_man:
        raise EvaluationInputError(
            f"image ids of predictions {path} and manifest {manifest_path} differ: "
            f"{len(not_pred)} manifest row(s) have no prediction (e.g. {not_pred[:3]}), "
            f"{len(not_man)} prediction(s) are not in the manifest (e.g. {not_man[:3]}). "
            "Predict on exactly the evaluated manifest (use --split to pick its rows).")
    order = np.fromiter((pos[k] for k in man_ids), np.int64, len(man_ids))
    try:
        scores = df[list(labels)].to_numpy(dtype=np.float64)[order]
    except (TypeError, ValueError) as exc:
        raise EvaluationInputError(f"predictions {path}: label columns must be numeric: {exc}")
    bad = ~np.isfinite(scores)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise EvaluationInputError(
            f"predictions {path}: {int(bad.sum())} score(s) are NaN or infinite (first: "
            f"image_id {man_ids[r]!r}, label {labels[c]!r}); re-run prediction")
    return scores


def truth_matrix(manifest, labels: Sequence[str], path="manifest",
                 policy: LabelPolicy | str | None = None) -> np.ndarray:
    """(n, L) float64 under the label policy: 1 positive, 0 negative, NaN left out."""
    missing = [c for c in labels if c not in manifest.columns]
    if missing:
        raise EvaluationInputError(f"manifest {path}: missing label column(s) {missing}")
    checked = check_labels(manifest, f"manifest {path}", labels)
    y = checked[list(labels)].to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~(np.isnan(y) | np.isin(y, (0.0, 1.0, -1.0)))
    if bad.any():
        raise EvaluationInputError(f"manifest {path}: label values must be 1, 0, -1 or empty; "
                                   f"found {np.unique(y[bad])[:5].tolist()}")
    return LabelPolicy.parse(policy).apply(y)


def model_label_policy(model_dir=None, thresholds_file=None) -> tuple[str | None, str | None]:
    """(policy text, file it came from) recorded with a trained model, or (None, None):
    model_config.json or thresholds.json of the model folder, or the thresholds file."""
    files = []
    if model_dir is not None:
        files += [Path(model_dir) / MODEL_CONFIG_FILE, Path(model_dir) / THRESHOLDS_FILE]
    if thresholds_file is not None:
        files.append(Path(thresholds_file))
    for f in files:
        if not f.is_file():
            continue
        try:
            value = json.loads(f.read_text()).get("label_policy")
        except (OSError, json.JSONDecodeError, AttributeError):
            continue
        if value is not None:
            try:
                return str(LabelPolicy.parse(value)), os.fspath(f)
            except ValueError as exc:
                raise EvaluationInputError(f"{f}: {exc}") from exc
    return None, None


def read_thresholds(model_dir=None, thresholds_file=None) -> dict | None:
    """{"thresholds": {label: t}, "rule": ">=" | ">", "source": path} or None when not given."""
    if thresholds_file is None and model_dir is None:
        return None
    p = Path(thresholds_file) if thresholds_file is not None else Path(model_dir) / THRESHOLDS_FILE
    if not p.is_file():
        raise EvaluationInputError(f"thresholds not found: {p} (a classifier folder holds "
                                   f"{THRESHOLDS_FILE}; or pass --thresholds FILE)")
    try:
        data = json.loads(p.read_text())
        th = {str(k): float(v) for k, v in data["thresholds"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise EvaluationInputError(f"{p}: expected {{\"labels\", \"thresholds\": {{label: "
                                   f"float}}, \"rule\"}}: {exc}") from exc
    rule = data.get("rule", ">=")
    if rule not in (">=", ">"):
        raise EvaluationInputError(f"{p}: rule must be '>=' or '>', got {rule!r}")
    return {"thresholds": th, "rule": rule, "source": os.fspath(p)}


def binarize(scores: np.ndarray, threshold: float, rule: str) -> np.ndarray:
    return scores >= threshold if rule == ">=" else scores > threshold
