"""Which torch device and dtype a run uses: one rule for every stage."""
from __future__ import annotations

import torch

from rv2.errors import UserError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """"auto" -> the first CUDA GPU if torch sees one, else the CPU; a CUDA device asked
    for on a machine without one is bad input."""
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but torch sees no CUDA GPU here; use --device cpu")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """"auto" -> fp16 on a GPU, fp32 on the CPU; else fp32 | fp16 | bf16."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    try:
        return DTYPES[dtype]
    except KeyError:
        raise UserError(f"unknown dtype {dtype!r}; use auto, fp32, fp16 or bf16") from None


__all__ = ["resolve_device", "resolve_dtype", "DTYPES"]
