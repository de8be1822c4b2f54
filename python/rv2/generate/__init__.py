"""Generation: fine-tuning the generator (train*), sampling, QC, retries and the
crash-safe dataset store behind `rv2 generate`.

Public API (imported lazily, so `import rv2.generate` loads no torch):
`generate_dataset`, `GenerateConfig`, the stage functions `encode_text`,
`denoise`, `decode`, `run_qc`, `write` and `seed_for`.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "generate_dataset": "rv2.generate.pipeline",
    "InProcessExecutor": "rv2.generate.pipeline",
    "load_prompts": "rv2.generate.pipeline",
    "GenerateConfig": "rv2.generate.config",
    "encode_text": "rv2.generate.sampler",
    "denoise": "rv2.generate.sampler",
    "decode": "rv2.generate.sampler",
    "initial_latents": "rv2.generate.sampler",
    "run_qc": "rv2.generate.qc",
    "write": "rv2.generate.store",
    "ShardedStore": "rv2.generate.store",
    "seed_for": "rv2.generate.seeds",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rv2.generate' has no attribute {name!r}")
