"""Deployment target profiles (`engines/<target>.yaml`), read through a typed,
versioned config like every other rv2 setting.

A profile names the target's compute capability, the precision and, per
component, the batch sizes the engines are built for and the fixed input
shapes. `rv2 build-engines --target NAME` reads `engines/NAME.yaml` (or a path).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Optional

from rv2.config import Config, ConfigError

PROFILE_DIR = Path(__file__).resolve().parents[3] / "engines"  # the repository's engines/
COMPONENTS = ("text_encoder", "unet", "vae_decoder", "qc_sex", "qc_race", "qc_age", "classifier")


@dataclasses.dataclass
class ComponentProfile:
    batch_sizes: list[int] = dataclasses.field(default_factory=lambda: [1])
    seq_len: Optional[int] = None            # text encoder: tokens
    latent: Optional[list[int]] = None       # unet / vae_decoder: [C, h, w]
    context: Optional[list[int]] = None      # unet: [tokens, D]
    image: Optional[list[int]] = None        # classifiers: [C, H, W]

    @property
    def min_batch(self) -> int:
        return min(self.batch_sizes)

    @property
    def max_batch(self) -> int:
        return max(self.batch_sizes)


@dataclasses.dataclass
class TargetProfile(Config):
    VERSION = 1
    target: str = "cpu"
    compute_capability: Optional[str] = None   # "8.0" (A100), "9.0" (H100/H200); None: CPU
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    components: dict = dataclasses.field(default_factory=dict)

    def component(self, name: str) -> ComponentProfile:
        if name not in self.components:
            raise ConfigError(f"profile {self.target!r} has no component {name!r}; "
                              f"it has {sorted(self.components)}")
        c = self.components[name]
        return c if isinstance(c, ComponentProfile) else ComponentProfile(**c)

    def validate(self) -> "TargetProfile":
        unknown = sorted(set(self.components) - set(COMPONENTS))
        if unknown:
            raise ConfigError(f"profile {self.target!r}: unknown component(s) {unknown}; "
                              f"known: {list(COMPONENTS)}")
        for name, c in self.components.items():
            if not isinstance(c, dict):
                raise ConfigError(f"profile {self.target!r}: component {name} must be a mapping")
            try:
                comp = ComponentProfile(**c)
            except TypeError as exc:
                raise ConfigError(f"profile {self.target!r}: component {name}: {exc}") from None
            if not comp.batch_sizes or any(int(b) < 1 for b in comp.batch_sizes):
                raise ConfigError(f"profile {self.target!r}: {name}.batch_sizes must be positive")
        return self


def load_profile(target: str | Path) -> TargetProfile:
    """A profile by name (`engines/NAME.yaml` of the repository) or by path."""
    p = Path(target)
    if not p.suffix:
        p = PROFILE_DIR / f"{target}.yaml"
    if not p.is_file():
        known = sorted(x.stem for x in PROFILE_DIR.glob("*.yaml")) if PROFILE_DIR.is_dir() else []
        raise ConfigError(f"target profile not found: {p} (known targets: {known}; "
                          "or give the path of a profile YAML)")
    return TargetProfile.load(p).validate()


__all__ = ["TargetProfile", "ComponentProfile", "load_profile", "COMPONENTS", "PROFILE_DIR"]
