"""What every dataset adapter shares: reading metadata tables and tracking exclusions.

An adapter is `index_X(files, root, cfg, progress=) -> (rows, ExclusionTracker,
sidecar extras)`: the source's metadata files in, rows with the manifest's
columns out. `rv2.data.index.index_dataset` does the rest (view filter, No
Finding rule, file checks).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from rv2.errors import MissingInputError, UserError


def na_to_none(v):
    """None for None and NaN, else the value."""
    return None if v is None or (isinstance(v, float) and v != v) else v


class ExclusionTracker:
    """The rows left after each exclusion step, for the CONSORT-style table."""

    def __init__(self, df: pd.DataFrame, start: str):
        self.df = df
        self.steps: list[dict] = [{"step": start, "removed": None, "remaining": int(len(df))}]

    def keep(self, mask, step: str) -> pd.DataFrame:
        mask = np.asarray(mask, dtype=bool)
        removed = int((~mask).sum())
        self.df = self.df.loc[mask].reset_index(drop=True)
        self.steps.append({"step": step, "removed": removed, "remaining": int(len(self.df))})
        return self.df


def read_table(path: str | os.PathLike, required: Sequence[str] = (), dataset: str = "",
               **kw) -> pd.DataFrame:
    """CSV (optionally .gz/.zip) with a clear error naming the file; `required`
    columns are checked here, so that a missing one never ends in a KeyError."""
    p = Path(path)
    if not p.is_file():
        raise MissingInputError(f"metadata file not found: {p}")
    try:
        df = pd.read_csv(p, low_memory=False, **kw)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"cannot read metadata table {p}: {exc}") from exc
    require_columns(df, p, required, dataset)
    return df


def require_columns(df: pd.DataFrame, path, required: Sequence[str], dataset: str = "") -> None:
    """UserError naming the file, the missing columns and every column the adapter needs."""
    missing = [c for c in required if c not in df.columns]
    if missing:
        who = f"{dataset}: " if dataset else ""
        raise UserError(f"{who}{path} lacks column(s) {missing}; this table needs "
                        f"{list(required)} (it has {list(df.columns)[:12]}"
                        f"{' ...' if len(df.columns) > 12 else ''})")


def read_header(path: str | os.PathLike) -> list[str]:
    p = Path(path)
    if p.suffix == ".txt":
        return []
    if p.suffix in (".tgz",) or p.name.endswith(".tar.gz") or p.is_dir():
        return []
    return list(read_table(p, nrows=0).columns)
