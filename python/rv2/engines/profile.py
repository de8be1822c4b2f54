"""Deployment target profiles, read through a typed, versioned config like every
other rv2 setting.

A profile names the target device and compute capability, the precision, the
backends to build (in order of preference: the first that builds and passes its
parity gate is the one `rv2.engines.load` runs) and, per component, the batch
sizes the engines are built for and the fixed input shapes (engine inputs):

    text_encoder  seq_len              tokens (77)
    unet          latent [C, h, w]     context [tokens, D]   batch = 2B under guidance
    vae_decoder   latent [C, h, w]
    qc_*          image [1, H, W]      the generated images the QC nets judge
    classifier    image [1, S, S]      preprocessed pixels in [0, 1]

A shape left out is taken from the model. Profiles ship with rv2
(`rv2/engines/profiles/NAME.yaml`); `rv2 build-engines --target NAME` finds
them by name, or reads any YAML path.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Optional

from rv2.config import Config, ConfigError

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"   # shipped as package data
COMPONENTS = ("text_encoder", "unet", "vae_decoder", "qc_sex", "qc_race", "qc_age", "classifier")
GENERATOR = ("text_encoder", "unet", "vae_decoder")
QC = ("qc_sex", "qc_race", "qc_age")
BACKENDS = ("onnxruntime", "aotinductor", "tensorrt")


@dataclasses.dataclass
class ComponentProfile:
    batch_sizes: list[int] = dataclasses.field(default_factory=lambda: [1])
    seq_len: Optional[int] = None            # text encoder: tokens
    latent: Optional[list[int]] = None       # unet / vae_decoder: [C, h, w]
    context: Optional[list[int]] = None      # unet: [tokens, D]
    image: Optional[list[int]] = None        # qc_* / classifier: engine input [1, H, W]

    @property
    def min_batch(self) -> int:
        return min(self.batch_sizes)

    @property
    def max_batch(self) -> int:
        return max(self.batch_sizes)

    @property
    def opt_batch(self) -> int:
        """The batch size the engine is tuned for (TensorRT's opt shape): the middle one."""
        b = sorted(self.batch_sizes)
        return b[len(b) // 2]


@dataclasses.dataclass
class TargetProfile(Config):
    VERSION = 1
    target: str = "cpu"
    device: Literal["cpu", "cuda"] = "cpu"
    compute_capability: Optional[str] = None   # "8.0" (A100), "9.0" (H100/H200); None: CPU
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    backends: list = dataclasses.field(default_factory=lambda: ["onnxruntime", "aotinductor"])
    components: dict = dataclasses.field(default_factory=dict)

    def component(self, name: str) -> ComponentProfile:
        if name not in self.components:
            raise ConfigError(f"profile {self.target!r} has no component {name!r}; "
                              f"it has {sorted(self.components)}")
        c = self.components[name]
        return c if isinstance(c, ComponentProfile) else ComponentProfile(**c)

    @property
    def onnx_precision(self) -> str:
        """ONNX graphs are fp32 on CPU and fp16 on GPU targets (bf16 targets too: ONNX
        Runtime's CUDA kernels and TensorRT's parsers take fp16 graphs everywhere)."""
        return "fp32" if self.precision == "fp32" else "fp16"

    def validate(self) -> "TargetProfile":
        unknown = sorted(set(self.components) - set(COMPONENTS))
        if unknown:
            raise ConfigError(f"profile {self.target!r}: unknown component(s) {unknown}; "
                              f"known: {list(COMPONENTS)}")
        bad = [b for b in self.backends if b not in BACKENDS]
        if bad or not self.backends:
            raise ConfigError(f"profile {self.target!r}: backends {self.backends} must be a "
                              f"non-empty list from {list(BACKENDS)}")
        if self.device == "cpu" and self.precision != "fp32":
            raise ConfigError(f"profile {self.target!r}: CPU targets build fp32 engines (bf16 is "
                              "about 75x slower without bf16 hardware); set precision: fp32")
        if self.device == "cpu" and "tensorrt" in self.backends:
            raise ConfigError(f"profile {self.target!r}: TensorRT needs a CUDA target")
        for name, c in self.components.items():
            if not isinstance(c, dict):
                raise ConfigError(f"profile {self.target!r}: component {name} must be a mapping")
            try:
                comp = ComponentProfile(**c)
            except TypeError as exc:
                raise ConfigError(f"profile {self.target!r}: component {name}: {exc}") from None
            if not comp.batch_sizes or any(int(b) < 1 for b in comp.batch_sizes):
                raise ConfigError(f"profile {self.target!r}: {name}.batch_sizes must be positive")
            if name == "unet" and comp.min_batch < 2:
                raise ConfigError(f"profile {self.target!r}: unet.batch_sizes count rows of the "
                                  "doubled guidance batch (2B); the smallest must be >= 2")
            if comp.image is not None and (len(comp.image) != 3 or comp.image[0] != 1
                                           or comp.image[1] != comp.image[2]):
                raise ConfigError(f"profile {self.target!r}: {name}.image must be [1, S, S] (the "
                                  f"engine takes square 1-channel images), got {comp.image}")
        return self


def known_targets() -> list[str]:
    return sorted(x.stem for x in PROFILE_DIR.glob("*.yaml")) if PROFILE_DIR.is_dir() else []


def load_profile(target: str | Path) -> TargetProfile:
    """A profile by name (shipped with rv2) or by path."""
    p = Path(target)
    if not p.suffix:
        p = PROFILE_DIR / f"{target}.yaml"
    if not p.is_file():
        raise ConfigError(f"target profile not found: {target} (known targets: {known_targets()}; "
                          "or give the path of a profile YAML)")
    return TargetProfile.load(p).validate()


__all__ = ["TargetProfile", "ComponentProfile", "load_profile", "known_targets", "COMPONENTS",
           "GENERATOR", "QC", "BACKENDS", "PROFILE_DIR"]
