"""The view filter of the stages that read manifests (prompts, classifiers).

The paper uses PA radiographs only, while `rv2 data index` keeps every view
unless asked (`--views PA`). Consumers take a `views` setting: a comma list
("PA", "PA,AP") keeps those views; "all" keeps every row and warns, once per
manifest, when the manifest mixes views, naming the count of each.
"""
from __future__ import annotations

import logging

import pandas as pd

from rv2.data.labels import parse_views
from rv2.errors import UserError

log = logging.getLogger("rv2.data.views")

UNKNOWN = "unknown"
_warned: set[tuple] = set()


def view_counts(df: pd.DataFrame) -> dict[str, int]:
    """Images per view, most frequent first; rows without a view count as "unknown"."""
    if "view" not in df.columns:
        return {UNKNOWN: len(df)} if len(df) else {}
    v = df["view"].astype("string").fillna(UNKNOWN)
    return {str(k): int(n) for k, n in v.value_counts().items()}


def _format(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {n}" for k, n in counts.items())


def select_views(df: pd.DataFrame, views: str | None, *, name: str, what: str) -> pd.DataFrame:
    """The rows of `df` with the asked views.

    views: "all" (or None) keeps every row and warns once per (manifest, views present)
    when more than one view is present; else a comma list of views to keep.
    name: the manifest (for messages); what: the stage reading it, e.g. "prompts".
    """
    wanted = parse_views(views)
    counts = view_counts(df)
    if wanted is None:
        key = (name, tuple(counts.items()))
        if len(counts) > 1 and key not in _warned:
            _warned.add(key)
            log.warning("%s: mixed views (%s) used for %s; the paper uses PA only. Set views=PA "
                        "to keep PA images, or views=%s to use these on purpose and silence this",
                        name, _format(counts), what, ",".join(k for k in counts if k != UNKNOWN))
        return df
    if "view" not in df.columns:
        raise UserError(f"{name}: no view column, so views={views!r} keeps nothing; use views=all")
    keep = df["view"].astype("string").isin(sorted(wanted)).fillna(False).to_numpy(bool)
    if not keep.any():
        raise UserError(f"{name}: no image with a view in {sorted(wanted)} for {what}; views present: "
                        f"{_format(counts) or 'none'}")
    return df[keep]


def describe_views(views: str | None, before: pd.DataFrame, after: pd.DataFrame) -> dict:
    """What a stage records about its view filter."""
    wanted = parse_views(views)
    return {"setting": "all" if wanted is None else ",".join(sorted(wanted)),
            "present": view_counts(before), "used": view_counts(after)}


__all__ = ["select_views", "view_counts", "describe_views", "UNKNOWN"]
