"""Seeds that depend only on (prompt_id, attempt) and the run's base seed.

The authors seeded each batch with its index, so an image depended on how
prompts were batched. Here the seed is a hash of the prompt id and the attempt
number: the same prompt gives the same image whatever the batch size, worker
count or processing order, and attempt k+1 (a QC retry) gets fresh noise.
"""
from __future__ import annotations

import hashlib

from rv2.errors import UserError

SEED_BITS = 63  # torch.Generator.manual_seed takes any int < 2**64; keep it signed-safe


def seed_for(prompt_id: str, attempt: int, base_seed: int = 0) -> int:
    """Deterministic 63-bit seed of one generation attempt."""
    if attempt < 0:
        raise UserError(f"attempt must be >= 0, got {attempt}")
    key = f"rv2-gen\0{int(base_seed)}\0{prompt_id}\0{int(attempt)}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> (64 - SEED_BITS)
