"""Settings of `rv2 train-generator` (fine-tuning Stable Diffusion on radiograph/prompt pairs).

Defaults follow the paper: AdamW, constant learning rate after 500 warm-up
steps, UNet and text encoder trained jointly, VAE frozen. The authors' code
values are the preset "authors" (lr 1e-5, cosine, weight decay 1e-2, clip 1.0).
Presets sit under the config file and the `--set` overrides.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import field
from typing import Literal

from rv2.config import Config, ConfigError, read_config_file

DEFAULT_VALIDATION_PROMPTS = [
    "65 year old WHITE male. No acute cardiopulmonary process .",
    "48 year old BLACK female. Small left pleural effusion .",
    "72 year old ASIAN female. Cardiomegaly with mild pulmonary edema .",
    "30 year old HISPANIC male. Right lower lobe consolidation concerning for pneumonia .",
]


@dataclasses.dataclass
class DataSection:
    # prompts: a Parquet/CSV table with image_id, path (relative to data_root), prompt, prompt_id.
    # folder: images in image_dir with <stem>.txt prompts in prompt_dir (default: image_dir).
    # wds: tar shards of the authors' format (<key>.pt_image, <key>.prompt_metadata, X_size.txt).
    source: Literal["prompts", "folder", "wds"] = "prompts"
    prompts_table: str | None = None
    data_root: str | None = None
    image_dir: str | None = None
    prompt_dir: str | None = None
    shards: list[str] = field(default_factory=list)
    resolution: int = 512
    # Encode every image to VAE latent moments once (a .npy memmap) and train from that.
    latent_cache: bool = False
    cache_dir: str | None = None
    num_workers: int = 2


@dataclasses.dataclass
class ModelSection:
    base: str | None = None  # local diffusers folder: SD 2.1 base, or RoentGen-v2 to continue
    train_text_encoder: bool = True
    mixed_precision: Literal["no", "fp16", "bf16"] = "bf16"  # forced to "no" on CPU
    gradient_checkpointing: bool = False
    attention: Literal["sdpa", "eager"] = "sdpa"
    ema: bool = False
    ema_decay: float = 0.9999
    # Share of samples trained with the empty prompt, so that classifier-free guidance has
    # an unconditional model to contrast with (0: the paper's fine-tuning, which relies on
    # the base model's unconditional branch). Drawn per sample position: resume stays exact.
    prompt_dropout: float = 0.0


@dataclasses.dataclass
class OptimSection:
    lr: float = 1e-5
    weight_decay: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    schedule: Literal["constant_with_warmup", "constant", "cosine", "linear"] = "constant_with_warmup"
    warmup_steps: int = 500
    max_grad_norm: float = 1.0  # 0 disables clipping
    batch_size: int = 48  # per device and micro-step; global = batch_size x devices x grad_accum
    grad_accum: int = 1
    max_steps: int = 10000


@dataclasses.dataclass
class CheckpointSection:
    every: int = 500  # optimizer steps; 0 = only at the end
    keep_last: int = 3
    resume: str = "auto"  # "auto" (latest in output_dir/checkpoints, if any), "none", or a folder


@dataclasses.dataclass
class ValidationSection:
    every: int = 500  # 0 = never
    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_VALIDATION_PROMPTS))
    steps: int = 50
    guidance: float = 4.0
    seed: int = 0


@dataclasses.dataclass
class LoggingSection:
    every: int = 10  # optimizer steps between CSV/TensorBoard rows
    tensorboard: bool = True
    progress: bool = True


@dataclasses.dataclass
class TrainGeneratorConfig(Config):
    VERSION = 1

    output_dir: str = "runs/generator"
    seed: int = 0
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimSection = field(default_factory=OptimSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    validation: ValidationSection = field(default_factory=ValidationSection)
    logging: LoggingSection = field(default_factory=LoggingSection)

    def override(self, overrides) -> TrainGeneratorConfig:
        return super().override(fix_overrides(overrides))

    def validate(self) -> TrainGeneratorConfig:
        o = self.optim
        checks = [
            (o.batch_size >= 1, "optim.batch_size must be >= 1"),
            (o.grad_accum >= 1, "optim.grad_accum must be >= 1"),
            (o.max_steps >= 1, "optim.max_steps must be >= 1"),
            (o.lr > 0, "optim.lr must be > 0"),
            (o.warmup_steps >= 0, "optim.warmup_steps must be >= 0"),
            (self.checkpoint.every >= 0 and self.checkpoint.keep_last >= 1,
             "checkpoint.every must be >= 0 and checkpoint.keep_last >= 1"),
            (self.data.resolution % 8 == 0 and self.data.resolution > 0,
             "data.resolution must be a positive multiple of 8"),
            (self.validation.every >= 0, "validation.every must be >= 0"),
            (0.0 <= self.model.prompt_dropout < 1.0, "model.prompt_dropout must be in [0, 1)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        return self


# Each preset is a set of overrides applied under the config file.
PRESETS: dict[str, dict] = {
    "paper": {},  # the defaults
    "authors": {"optim": {"lr": 1e-5, "schedule": "cosine", "weight_decay": 1e-2,
                          "max_grad_norm": 1.0, "warmup_steps": 500},
                "checkpoint": {"every": 500}},
}


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# YAML 1.1 (PyYAML) reads "1e-5" as a string; learning rates are written that way.
_SCI = re.compile(r"^[+-]?\d+(\.\d*)?[eE][+-]?\d+$")


def _sci_floats(value):
    if isinstance(value, dict):
        return {k: _sci_floats(v) for k, v in value.items()}
    if isinstance(value, str) and _SCI.match(value.strip()):
        return float(value)
    return value


def fix_overrides(overrides) -> list[str]:
    """`optim.lr=1e-5` -> `optim.lr=1e-05` written so that YAML reads a float."""
    out = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        out.append(f"{key}={float(raw):.16e}" if sep and _SCI.match(raw.strip()) else item)
    return out


def load_train_config(path=None, overrides=(), preset: str | None = None) -> TrainGeneratorConfig:
    """Defaults, then the preset, then the file, then `key=value` overrides."""
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    data = _merge(PRESETS.get(preset or "paper", {}),
                  _sci_floats(read_config_file(path)) if path else {})
    cfg = TrainGeneratorConfig.from_dict(data, source=str(path) if path else "<defaults>")
    return (cfg.override(overrides) if overrides else cfg).validate()
