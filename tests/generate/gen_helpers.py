"""Sizes shared by the generate tests; the fakes themselves live in `rv2.testing`."""
from __future__ import annotations

import torch
from rv2.testing.prompts import prompts_table  # noqa: F401 - re-exported for the tests
from rv2.testing.qc import MeanNet, constant_bundle, mean_qc  # noqa: F401
from rv2.testing.sd import tiny_components

SIZE = 32   # tiny images: 32 px -> 16 x 16 latents
STEPS = 3


def tiny(seed: int = 0):
    torch.manual_seed(seed)
    return tiny_components(seed=seed, sample_size=SIZE)
