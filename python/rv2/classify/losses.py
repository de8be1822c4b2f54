"""Masked multi-label binary cross-entropy."""
from __future__ import annotations


def masked_bce(logits, target, mask):
    """Mean BCE-with-logits over the entries where mask == 1 (0 when none is)."""
    import torch.nn.functional as F

    per = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    m = mask.float()
    return (per * m).sum() / m.sum().clamp_min(1.0)
