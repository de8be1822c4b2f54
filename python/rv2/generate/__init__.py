"""Regeneration: QC'd sampling, retries and the crash-safe dataset store behind
`rv2 generate`. Generator fine-tuning lives in `rv2.finetune`.

- `stages`: the ports (text encoder, denoiser, decoder, QC predictor, writer),
  `StageSet` and the timed `StageRunner`;
- `eager`: the diffusers implementation of the ports;
- `executor`: the one retry rule and the in-process executor;
- `sampler`: the sampling loop and the seeded noise; `qc_rules`: the verdicts;
- `store`: the journal + images store; `pipeline.generate_dataset` wires them.

Names are imported lazily, so `import rv2.generate` loads no torch.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "generate_dataset": "rv2.generate.pipeline",
    "load_prompts": "rv2.generate.pipeline",
    "GenerateConfig": "rv2.generate.config",
    "StageSet": "rv2.generate.stages",
    "StageRunner": "rv2.generate.stages",
    "SamplingPlan": "rv2.generate.stages",
    "eager_stages": "rv2.generate.eager",
    "InProcessExecutor": "rv2.generate.executor",
    "next_attempt": "rv2.generate.executor",
    "denoise": "rv2.generate.sampler",
    "initial_latents": "rv2.generate.sampler",
    "judge": "rv2.generate.qc_rules",
    "ShardedStore": "rv2.generate.store",
    "seed_for": "rv2.generate.seeds",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rv2.generate' has no attribute {name!r}")
