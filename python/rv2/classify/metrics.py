"""Validation AUROC per label (NaN where a label has only one class)."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def auroc_per_label(target: np.ndarray, mask: np.ndarray, probs: np.ndarray,
                    labels: Sequence[str]) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    out = {}
    for j, name in enumerate(labels):
        m = mask[:, j] > 0
        y = target[m, j]
        if y.size == 0 or y.min() == y.max():
            out[name] = float("nan")
        else:
            out[name] = float(roc_auc_score(y, probs[m, j]))
    return out


def mean_defined(values: dict[str, float]) -> tuple[float, int]:
    v = np.array([x for x in values.values() if np.isfinite(x)], dtype=np.float64)
    return (float(v.mean()) if v.size else float("nan")), int(v.size)
