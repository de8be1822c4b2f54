"""Dataset statistics like the paper's Supplementary Tables 2 and 3.

`demographics_table(df)`: per split (and all rows), counts and percentages by
sex, age bin, race and positive label (long format: split, variable, level,
n, pct; pct is of the split's images). Missing values are their own level
("missing") so that columns add up to 100%.
`intersectional_table(df)`: per split, counts of sex x race and sex x age bin
(split, pair, sex, level, n, pct of the split).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from rv2.config import write_artifact_meta
from rv2.data.schema import AGE_BINS, CHEXPERT_LABELS, RACES, SEXES
from rv2.files import atomic_write_text

SPLIT_ORDER = ("train", "validate", "test")
MISSING = "missing"


def _splits(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    present = [s for s in SPLIT_ORDER if (df["split"] == s).any()]
    others = sorted(set(df["split"].dropna().unique()) - set(SPLIT_ORDER))
    out = [(s, df[df["split"] == s]) for s in present + others]
    if df["split"].isna().any():
        out.append((MISSING, df[df["split"].isna()]))
    out.append(("all", df))
    return out


def _levels(col: pd.Series, order) -> list[tuple[str, int]]:
    vals = col.astype("object").where(col.notna(), MISSING)
    counts = vals.value_counts()
    levels = [lv for lv in order if lv in counts.index] + \
        sorted(lv for lv in counts.index if lv not in order and lv != MISSING)
    if MISSING in counts.index:
        levels.append(MISSING)
    return [(lv, int(counts[lv])) for lv in levels]


def demographics_table(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for split, part in _splits(df):
        n = len(part)
        rows.append((split, "images", "total", n, 100.0 if n else np.nan))
        rows.append((split, "patients", "total", int(part["patient_id"].nunique()), np.nan))
        for var, order in (("sex", SEXES), ("age_bin", AGE_BINS), ("race", RACES)):
            for lv, k in _levels(part[var], order):
                rows.append((split, var, lv, k, 100.0 * k / n if n else np.nan))
        for c in CHEXPERT_LABELS:
            k = int((part[c].to_numpy(dtype=float) == 1.0).sum())
            rows.append((split, "label", c, k, 100.0 * k / n if n else np.nan))
    return pd.DataFrame(rows, columns=["split", "variable", "level", "n", "pct"])


def intersectional_table(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for split, part in _splits(df):
        n = len(part)
        sex = part["sex"].astype("object").where(part["sex"].notna(), MISSING)
        for var, order in (("race", RACES), ("age_bin", AGE_BINS)):
            other = part[var].astype("object").where(part[var].notna(), MISSING)
            counts = pd.crosstab(sex, other)
            for s in [x for x in SEXES + (MISSING,) if x in counts.index]:
                for lv in [x for x in tuple(order) + (MISSING,) if x in counts.columns]:
                    k = int(counts.at[s, lv])
                    if k == 0 and MISSING in (s, lv):
                        continue
                    rows.append((split, f"sex x {var}", s, lv, k, 100.0 * k / n if n else np.nan))
    return pd.DataFrame(rows, columns=["split", "pair", "sex", "level", "n", "pct"])


def format_wide(table: pd.DataFrame, keys: list[str]) -> str:
    """A long table as text: one row per key, one 'n (pct%)' column per split."""
    t = table.copy()
    t["cell"] = [f"{n} ({p:.1f}%)" if p == p else f"{n}" for n, p in zip(t["n"], t["pct"])]
    wide = t.pivot_table(index=keys, columns="split", values="cell", aggfunc="first", sort=False)
    wide = wide.reindex(pd.MultiIndex.from_frame(t[keys].drop_duplicates()))  # table order
    order = [s for s in list(SPLIT_ORDER) + [MISSING, "all"] if s in wide.columns] + \
        [s for s in wide.columns if s not in SPLIT_ORDER + (MISSING, "all")]
    wide = wide[order].fillna("")
    return wide.to_string()


def write_stats(df: pd.DataFrame, out_dir: str | os.PathLike, inputs=()) -> dict[str, Path]:
    """Write demographics.csv and intersectional.csv (each with rv2 metadata)."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, table in (("demographics", demographics_table(df)),
                        ("intersectional", intersectional_table(df))):
        p = out / f"{name}.csv"
        atomic_write_text(p, table.to_csv(index=False, float_format="%.2f"))
        write_artifact_meta(p, None, inputs=list(inputs), extra={"table": name,
                                                                 "rows": int(len(table))})
        paths[name] = p
    return paths
