"""Training data for the strategies: manifests, split filters, roots and the
label-efficiency subsets (patient-level, seeded)."""
from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from rv2.classify.config import VAL_SPLIT_ALIASES
from rv2.data.manifest import image_root
from rv2.errors import UserError

log = logging.getLogger(__name__)


# The image root of a manifest (explicit, else its sidecar's, else its folder).
manifest_root = image_root


def select_split(df: pd.DataFrame, split: str | None, name: str, *, aliases=()) -> pd.DataFrame:
    """Rows of `split` (or its aliases) when the manifest has a split column with values;
    all rows when split is None or the column is absent or empty."""
    if split is None or "split" not in df.columns or df["split"].isna().all():
        return df
    wanted = {split, *aliases}
    sel = df[df["split"].astype("string").isin(wanted).fillna(False).to_numpy(bool)]
    if sel.empty:
        present = sorted(str(s) for s in df["split"].dropna().unique())
        raise UserError(f"{name}: no row with split in {sorted(wanted)}; splits present: {present}. "
                         "Set train_split / val_split (or null to use every row).")
    return sel


def val_rows(df: pd.DataFrame, split: str | None, name: str) -> pd.DataFrame:
    aliases = VAL_SPLIT_ALIASES if split in VAL_SPLIT_ALIASES else ()
    return select_split(df, split, name, aliases=aliases)


def patient_subset(df: pd.DataFrame, *, n: int | None = None, fraction: float | None = None,
                   seed: int = 0) -> pd.DataFrame:
    """Whole patients in a seeded random order, the shortest prefix holding at least
    the requested number of images (n, or round(fraction x images)).

    Nested: for one seed, a smaller request is a subset of a larger one. Rows without
    a patient_id count as their own patient. The result may exceed n by the images
    of the last patient taken.
    """
    if n is not None and fraction is not None:
        raise UserError("give n_real or real_fraction, not both")
    if n is None and fraction is None:
        return df
    total = len(df)
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise UserError(f"real_fraction must be in (0, 1], got {fraction}")
        n = max(1, int(round(fraction * total)))
    if n <= 0:
        raise UserError(f"n_real must be positive, got {n}")
    if n >= total:
        if n > total:
            log.warning("asked for %d real images, the training set has %d: using all", n, total)
        return df
    if "patient_id" in df.columns:
        pid = df["patient_id"].astype("string")
        pid = pid.where(pid.notna(), "__row_" + pd.Series(np.arange(total), index=df.index).astype(str))
    else:
        pid = pd.Series([f"__row_{i}" for i in range(total)], index=df.index, dtype="string")
    codes, uniques = pd.factorize(pid.to_numpy(), sort=True)  # sorted: independent of row order
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniques))
    counts = np.bincount(codes, minlength=len(uniques))
    cum = np.cumsum(counts[order])
    k = int(np.searchsorted(cum, n) + 1)
    chosen = np.zeros(len(uniques), bool)
    chosen[order[:k]] = True
    return df[chosen[codes]]


def image_sample(df: pd.DataFrame, n: int | None, seed: int = 0) -> pd.DataFrame:
    """n images drawn without replacement (seeded, nested for one seed); all when n is None."""
    if n is None or n >= len(df):
        if n is not None and n > len(df):
            log.warning("asked for %d synthetic images, the store has %d: using all", n, len(df))
        return df
    if n <= 0:
        raise UserError(f"n_synthetic must be positive, got {n}")
    order = np.random.default_rng(seed).permutation(len(df))
    return df.iloc[np.sort(order[:n])]


def describe(df: pd.DataFrame) -> dict:
    n_pat = int(df["patient_id"].nunique()) if "patient_id" in df.columns else None
    return {"images": int(len(df)), "patients": n_pat}


def is_finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)
