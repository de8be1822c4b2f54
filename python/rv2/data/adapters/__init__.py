"""Dataset adapters: one module per source dataset, each mapping the source's
published metadata files to manifest rows (see `base`). `ADAPTERS` is the registry
`rv2 data index --dataset NAME` looks up."""
from __future__ import annotations

from typing import Callable

from rv2.data.adapters import (
    chexpert,
    chexpert_plus,
    mimic,
    nih,
    openi,
    padchest,
    vindr,
)
from rv2.errors import UserError

ADAPTERS: dict[str, Callable] = {
    "mimic": mimic.index_mimic,
    "chexpert": chexpert.index_chexpert,
    "chexpert-plus": chexpert_plus.index_chexpert_plus,
    "nih": nih.index_nih,
    "padchest": padchest.index_padchest,
    "vindr": vindr.index_vindr,
    "openi": openi.index_openi,
}


def get_adapter(dataset: str) -> Callable:
    try:
        return ADAPTERS[dataset]
    except KeyError:
        raise UserError(f"unknown dataset {dataset!r}; choose one of {sorted(ADAPTERS)}") from None


__all__ = ["ADAPTERS", "get_adapter"]
