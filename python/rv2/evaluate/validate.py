"""Input checks shared by the statistics API: clear errors naming the input."""
from __future__ import annotations

import numpy as np

from rv2.errors import UserError


def as_binary_labels(y, name: str = "y_true") -> np.ndarray:
    """float64 labels: 1 positive, 0 negative, NaN unknown (-1 becomes NaN).

    Booleans are accepted; any other value is an error naming `name`.
    """
    arr = np.asarray(y)
    if arr.dtype == bool:
        arr = arr.astype(np.float64)
    try:
        arr = arr.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{name}: labels must be numeric 1/0/-1/NaN ({exc})") from exc
    arr = np.where(arr == -1.0, np.nan, arr)
    bad = ~(np.isnan(arr) | (arr == 0.0) | (arr == 1.0))
    if bad.any():
        vals = np.unique(arr[bad])[:5]
        raise UserError(f"{name}: labels must be 1 (positive), 0 (negative) or -1/NaN "
                         f"(unknown); found {vals.tolist()}")
    return arr


def as_scores(s, name: str, labels: np.ndarray | None = None) -> np.ndarray:
    """float64 scores; NaN or infinity (of a case with a known label) is an error."""
    arr = np.asarray(s, dtype=np.float64)
    check = np.ones(arr.shape, bool) if labels is None else ~np.isnan(labels)
    bad = check & ~np.isfinite(arr)
    if bad.any():
        idx = np.argwhere(bad)[0].tolist()
        raise UserError(f"{name}: {int(bad.sum())} score(s) are NaN or infinite (first at "
                         f"index {idx}); fix the predictions before evaluating")
    return arr


def check_lengths(what: str, **arrays) -> int:
    """One value (row) per case in every array given (None skipped); non-empty.

    Raises a UserError naming the arrays and their lengths instead of letting
    numpy fail on a broadcast, and for empty input instead of returning NaN.
    """
    sizes = {k: int(np.shape(v)[0]) if np.ndim(v) else 1 for k, v in arrays.items()
             if v is not None}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{k} has {n}" for k, n in sizes.items())
        raise UserError(f"{what}: inputs must have one value per case, but {listed}")
    n = next(iter(sizes.values()), 0)
    if n == 0:
        raise UserError(f"{what}: no cases (empty {', '.join(sizes)}); nothing to evaluate")
    return n
