"""Writing and reading manifests: Parquet + a JSON sidecar + rv2 metadata.

    write_manifest(df, "out/mimic.parquet", sidecar, config=cfg, inputs=[...])
      -> out/mimic.parquet              the table (REQUIRED_COLUMNS first)
         out/mimic.sidecar.json         counts, label policy, exclusions (CONSORT)
         out/mimic.parquet.rv2.json     config, rv2 version, inputs' hashes
    df = read_manifest("out/mimic.parquet")   # validated; clear error if not a manifest
    sidecar = read_sidecar("out/mimic.parquet")
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from rv2.config import write_artifact_meta
from rv2.data.demographics import check_demographics
from rv2.data.schema import (
    AGE_BINS,
    CHEXPERT_LABELS,
    ID_COLUMNS,
    RACES,
    REQUIRED_COLUMNS,
    SEXES,
    TEXT_COLUMNS,
    VIEWS,
    age_bin,
)
from rv2.errors import UserError
from rv2.files import atomic_path, atomic_write_text, dumps

SPLITS = ("train", "validate", "test")
STRING_COLUMNS = ("image_id", "path", "patient_id", "study_id", "dataset", "view", "sex",
                  "age_bin", "race", "split") + TEXT_COLUMNS


class ManifestError(UserError):
    """A file that is not a valid rv2 manifest."""


def sidecar_path(manifest_path: str | os.PathLike) -> Path:
    p = Path(manifest_path)
    return p.with_name(p.stem + ".sidecar.json")


def _missing(v) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and v != v)


def conform(df: pd.DataFrame, dataset: str | None = None) -> pd.DataFrame:
    """Columns in schema order with schema dtypes: strings (nullable), age float, labels float.

    Missing schema columns are added empty; `age_bin` is recomputed from `age`
    (kept as given where the age is missing);
    extra columns are kept after the schema columns.
    """
    out = df.copy()
    n = len(out)
    if dataset is not None:
        out["dataset"] = dataset
    for c in REQUIRED_COLUMNS + TEXT_COLUMNS:
        if c not in out:
            out[c] = np.nan if c in CHEXPERT_LABELS or c == "age" else None
    out["age"] = pd.to_numeric(out["age"], errors="coerce").astype("float64")
    # the bin follows the age; a row with a bin but no exact age keeps its bin
    given = out["age_bin"].to_numpy(dtype=object)
    out["age_bin"] = [age_bin(a) if a == a else (None if _missing(b) else b)
                      for a, b in zip(out["age"].to_numpy(), given)]
    for c in CHEXPERT_LABELS:
        out[c] = pd.to_numeric(out[c], errors="coerce").astype("float64")
    for c in STRING_COLUMNS:
        col = out[c]
        out[c] = pd.array([None if _missing(v) else str(v) for v in col.to_numpy(dtype=object)],
                          dtype="string") if n else pd.array([], dtype="string")
    extra = [c for c in out.columns if c not in REQUIRED_COLUMNS and c not in TEXT_COLUMNS]
    return out[list(REQUIRED_COLUMNS) + list(TEXT_COLUMNS) + extra].reset_index(drop=True)


def validate(df: pd.DataFrame, name: str = "manifest") -> None:
    """Raise ManifestError naming `name` when columns or values break the schema."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"{name}: missing column(s) {missing}; write manifests with "
                            "`rv2 data index` (schema: rv2.data.schema.REQUIRED_COLUMNS)")
    checks = {"sex": SEXES, "race": RACES, "age_bin": AGE_BINS, "view": VIEWS}
    for col, allowed in checks.items():
        vals = set(df[col].dropna().unique().tolist())
        bad = vals - set(allowed)
        if bad:
            raise ManifestError(f"{name}: column {col!r} has values {sorted(bad)[:5]} outside "
                                f"{list(allowed)}")
    for c in CHEXPERT_LABELS:
        v = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isnan(v) & ~np.isin(v, (1.0, 0.0, -1.0))
        if bad.any():
            raise ManifestError(f"{name}: label {c!r} has values {sorted(set(v[bad]))[:5]}; "
                                "allowed 1, 0, -1, NaN")
    if df["image_id"].isna().any():
        raise ManifestError(f"{name}: {int(df['image_id'].isna().sum())} row(s) without image_id")
    dup = df["image_id"].duplicated()
    if dup.any():
        raise ManifestError(f"{name}: duplicate image_id(s), e.g. "
                            f"{df.loc[dup, 'image_id'].head(3).tolist()}")


def check_labels(df: pd.DataFrame, name: str, labels=CHEXPERT_LABELS) -> pd.DataFrame:
    """A copy of `df` with the label columns as float64; ManifestError for text values
    (a string-typed column) or values other than 1, 0, -1 and empty, naming rows."""
    out = df.copy()
    ids = df["image_id"].to_numpy(dtype=object) if "image_id" in df.columns else None
    for c in labels:
        if c not in df.columns:
            continue
        col = df[c]
        if not (pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)):
            vals = col.to_numpy(dtype=object)
            text = np.flatnonzero([isinstance(v, str) for v in vals])
            if len(text):
                where = ", ".join(f"{i}" + (f" ({ids[i]})" if ids is not None else "")
                                  for i in text[:5])
                raise ManifestError(
                    f"{name}: label {c!r} holds text ({sorted({str(vals[i]) for i in text})[:5]} "
                    f"in {len(text)} row(s) (0-based) {where}); labels must be numbers 1, 0, -1 "
                    "or empty: write manifests with `rv2 data index`")
        v = pd.to_numeric(col, errors="coerce").astype("float64")
        a = v.to_numpy()
        bad = np.flatnonzero(~np.isnan(a) & ~np.isin(a, (1.0, 0.0, -1.0)))
        if len(bad):
            where = ", ".join(f"{i}" + (f" ({ids[i]})" if ids is not None else "")
                              for i in bad[:5])
            raise ManifestError(f"{name}: label {c!r} has values {sorted(set(a[bad]))[:5]} in "
                                f"{len(bad)} row(s) (0-based) {where}; allowed 1, 0, -1, empty")
        out[c] = v
    return out


def check_manifest(df: pd.DataFrame, name: str = "manifest") -> pd.DataFrame:
    """The one check of a manifest read from disk: required columns, label dtypes and
    values, demographics (well-known spellings mapped, see rv2.data.demographics),
    then `validate`. Returns the checked copy."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"{name}: missing column(s) {missing}; write manifests with "
                            "`rv2 data index` (schema: rv2.data.schema.REQUIRED_COLUMNS)")
    df = check_labels(df, name)
    df = check_demographics(df, name)
    validate(df, name)
    return df


def summary_counts(df: pd.DataFrame) -> dict:
    """Counts for the sidecar: rows, patients, studies, by split/view/sex/race/age bin, labels."""
    def vc(col):
        return {("null" if k is None or k is pd.NA or k != k else str(k)): int(v)
                for k, v in df[col].value_counts(dropna=False).items()}

    labels = {}
    for c in CHEXPERT_LABELS:
        v = df[c].to_numpy(dtype=float)
        labels[c] = {"positive": int((v == 1).sum()), "negative": int((v == 0).sum()),
                     "uncertain": int((v == -1).sum()), "blank": int(np.isnan(v).sum())}
    return {"rows": int(len(df)), "patients": int(df["patient_id"].nunique()),
            "studies": int(df["study_id"].nunique()),
            "by_split": vc("split"), "by_view": vc("view"), "by_sex": vc("sex"),
            "by_race": vc("race"), "by_age_bin": vc("age_bin"), "labels": labels}


def write_manifest(df: pd.DataFrame, path: str | os.PathLike, sidecar: Mapping,
                   *, config=None, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Validate, then write the Parquet table, its sidecar and its rv2 metadata atomically."""

    path = Path(path)
    df = conform(df)
    validate(df, str(path))
    side = dict(sidecar)
    side.setdefault("counts", summary_counts(df))
    side["columns"] = list(df.columns)
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    atomic_write_text(sidecar_path(path), dumps(side, indent=2))
    write_artifact_meta(path, config, inputs=list(inputs),
                        extra={"sidecar": sidecar_path(path).name, "rows": int(len(df))})
    return path


def read_manifest(path: str | os.PathLike, *, validate_values: bool = True,
                  required: Sequence[str] | None = None) -> pd.DataFrame:
    """The one manifest reader: a Parquet manifest as a DataFrame, checked against the
    schema (ManifestError naming the file if not one).

    validate_values: check every schema column's dtype and values (`validate`); else
    only that the `required` columns (default: the schema's) are present, for
    consumers that need fewer columns (evaluation needs ids and demographics)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path} (make one with `rv2 data index`)")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for non-Parquet
        raise ManifestError(f"{path}: not a readable Parquet file: {exc}") from exc
    if validate_values:
        df = check_manifest(df, str(path))
    else:
        need = REQUIRED_COLUMNS if required is None else tuple(required)
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise ManifestError(f"{path}: missing column(s) {missing}")
    return df


def image_root(manifest: str | os.PathLike, *roots: str | os.PathLike | None) -> Path:
    """The folder a manifest's image paths are relative to: the first explicit root,
    else the root recorded in its sidecar (by `rv2 data index`) when that folder
    exists, else the manifest's folder."""
    for r in roots:
        if r:
            return Path(r)
    side = sidecar_path(manifest)
    if side.is_file():
        try:
            recorded = json.loads(side.read_text()).get("root")
        except (OSError, json.JSONDecodeError, AttributeError):
            recorded = None
        if recorded and Path(recorded).is_dir():
            return Path(recorded)
    return Path(manifest).resolve().parent


def read_sidecar(manifest_path: str | os.PathLike) -> dict:
    p = sidecar_path(manifest_path)
    if not p.is_file():
        raise ManifestError(f"no sidecar next to {manifest_path} (looked for {p})")
    return json.loads(p.read_text())


def format_consort(steps: list[Mapping]) -> str:
    """The exclusion steps as a printable table (CONSORT-style flow)."""
    if not steps:
        return "(no exclusion steps)"
    w = max(len(s["step"]) for s in steps)
    lines = [f"{'step':<{w}}  {'removed':>9}  {'remaining':>9}"]
    for s in steps:
        removed = "" if s.get("removed") is None else f"{s['removed']:>9d}"
        lines.append(f"{s['step']:<{w}}  {removed:>9}  {s['remaining']:>9d}")
    return "\n".join(lines)


__all__ = ["ManifestError", "SPLITS", "conform", "validate", "check_manifest", "check_labels", "write_manifest", "read_manifest",
           "read_sidecar", "sidecar_path", "image_root", "summary_counts", "format_consort", "ID_COLUMNS"]
