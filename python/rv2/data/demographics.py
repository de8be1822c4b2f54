"""Demographic columns checked against the schema, in every reader.

A subgroup whose values are spelled differently from the schema (`Female`
for `F`) would be silently empty in every fairness table, so each reader of a
table with demographics (manifests, predictions' manifests, prompts tables)
passes it through `check_demographics`:

- well-known spellings map to the schema's value by one documented rule
  (docs/bad-input.md): case and surrounding blanks are ignored, and sex also
  takes the English words: `F`, `f`, `female`, `Female`, `FEMALE`, `woman` -> `F`;
  `M`, `male`, `man` -> `M`; race `WHITE`, `white` -> `White`; age bins as
  written in the schema (`60-80`, `80+`, `<18`), blanks ignored;
- missing values (empty, None, NaN) stay missing;
- anything else is refused: the error names the file, the column, the bad
  values and the rows that hold them;
- ages must be numbers within `AGE_RANGE` (0 to 120 years).
"""
from __future__ import annotations

import logging
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from rv2.data.schema import AGE_BINS, AGE_RANGE, RACES, SEXES
from rv2.errors import UserError

log = logging.getLogger("rv2.data")

SEX_WORDS = {"female": "F", "woman": "F", "male": "M", "man": "M"}


class DemographicsError(UserError):
    """A demographic column with values outside the schema."""


def _key(v: str) -> str:
    return "".join(str(v).split()).lower()


def _spellings(allowed: Sequence[str], extra: dict[str, str] | None = None) -> dict[str, str]:
    table = {_key(a): a for a in allowed}
    table.update({_key(k): v for k, v in (extra or {}).items() if v in allowed})
    return table


def is_missing(v) -> bool:
    return (v is None or v is pd.NA or (isinstance(v, float) and v != v)
            or (isinstance(v, str) and not v.strip()))


def _rows_text(rows: np.ndarray, ids: np.ndarray | None, limit: int = 5) -> str:
    shown = []
    for r in rows[:limit]:
        shown.append(f"{int(r)} ({ids[r]})" if ids is not None else str(int(r)))
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return "(0-based) " + ", ".join(shown) + more


def canonical_column(df: pd.DataFrame, col: str, allowed: Sequence[str], name: str,
                     extra: dict[str, str] | None = None, id_column: str = "image_id",
                     required: bool = False) -> pd.Series:
    """`df[col]` with well-known spellings mapped to `allowed`; DemographicsError
    naming bad values and their rows (0-based row numbers, with their ids) otherwise."""
    table = _spellings(allowed, extra)
    values = df[col].to_numpy(dtype=object)
    out = np.empty(len(values), dtype=object)
    bad_rows, bad_vals = [], []
    for i, v in enumerate(values):
        if is_missing(v):
            out[i] = None
            continue
        canon = table.get(_key(v))
        if canon is None:
            bad_rows.append(i)
            bad_vals.append(str(v))
        out[i] = canon
    if bad_rows:
        ids = df[id_column].to_numpy(dtype=object) if id_column in df.columns else None
        raise DemographicsError(
            f"{name}: column {col!r} has value(s) {sorted(set(bad_vals))[:5]} outside "
            f"{list(allowed)} in {len(bad_rows)} row(s): {_rows_text(np.array(bad_rows), ids)}; "
            "fix those values (accepted spellings: docs/bad-input.md)"
            + ("" if required else " or leave them empty"))
    mapped = int(sum(1 for v, c in zip(values, out) if c is not None and v != c))
    if mapped:
        log.info("%s: %s: %d value(s) mapped to the schema's spelling %s", name, col, mapped,
                 list(allowed))
    return pd.Series(pd.array(out, dtype="string"), index=df.index)


def check_ages(df: pd.DataFrame, name: str, col: str = "age", id_column: str = "image_id",
               required: bool = False) -> pd.Series:
    """`df[col]` as float years; DemographicsError for text or ages outside AGE_RANGE."""
    raw = df[col]
    ids = df[id_column].to_numpy(dtype=object) if id_column in df.columns else None
    num = pd.to_numeric(raw, errors="coerce").astype("float64")
    given = ~np.array([is_missing(v) for v in raw.to_numpy(dtype=object)], dtype=bool)
    text = np.flatnonzero(given & num.isna().to_numpy())
    if len(text):
        vals = sorted({str(v) for v in raw.to_numpy(dtype=object)[text]})[:5]
        raise DemographicsError(f"{name}: column {col!r} must hold numbers (years); found "
                                f"{vals} in {len(text)} row(s): {_rows_text(text, ids)}")
    lo, hi = AGE_RANGE
    a = num.to_numpy()
    out = np.flatnonzero(~np.isnan(a) & ((a < lo) | (a > hi)))
    if len(out):
        vals = sorted({float(x) for x in a[out]})[:5]
        raise DemographicsError(f"{name}: column {col!r} has age(s) {vals} outside the schema's "
                                f"range [{lo}, {hi}] in {len(out)} row(s): {_rows_text(out, ids)}")
    if required and num.isna().any():
        rows = np.flatnonzero(num.isna().to_numpy())
        raise DemographicsError(f"{name}: column {col!r} is empty in {len(rows)} row(s): "
                                f"{_rows_text(rows, ids)}")
    return num


def check_demographics(df: pd.DataFrame, name: str, *, races: Sequence[str] = RACES,
                       columns: Iterable[str] | None = None, id_column: str = "image_id",
                       require: Iterable[str] = ()) -> pd.DataFrame:
    """A copy of `df` whose sex, race, age_bin and age columns (those present, or
    `columns`) hold the schema's values; refuses the rest (DemographicsError).
    `require`: columns that must not be empty in any row."""
    cols = [c for c in (columns or ("sex", "race", "age_bin", "age")) if c in df.columns]
    require = set(require)
    out = df.copy()
    allowed = {"sex": (SEXES, SEX_WORDS), "race": (tuple(races), None),
               "age_bin": (AGE_BINS, None)}
    for c in cols:
        if c == "age":
            out[c] = check_ages(out, name, id_column=id_column, required=c in require)
            continue
        vals, extra = allowed[c]
        out[c] = canonical_column(out, c, vals, name, extra, id_column, c in require)
        if c in require and out[c].isna().any():
            rows = np.flatnonzero(out[c].isna().to_numpy())
            ids = out[id_column].to_numpy(dtype=object) if id_column in out.columns else None
            raise DemographicsError(f"{name}: column {c!r} is empty in {len(rows)} row(s): "
                                    f"{_rows_text(rows, ids)}; it must be one of {list(vals)}")
    return out


__all__ = ["DemographicsError", "SEX_WORDS", "check_demographics", "canonical_column",
           "check_ages", "is_missing"]
