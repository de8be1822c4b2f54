"""Settings of `rv2 generate` (saved next to the store)."""
from __future__ import annotations

import dataclasses
from typing import Literal, Optional

from rv2.config import Config
from rv2.errors import UserError

# Sampling algorithms `rv2 generate --sampler` offers (`rv2.generate.slot_samplers.make_scheduler`).
SAMPLERS = ("pndm", "ddim", "euler", "dpmpp2m", "unipc")
# Those with a per-slot version (`rv2.generate.slot_samplers`): continuous batching, early rejection.
SLOT_SAMPLERS = ("pndm", "ddim", "euler", "dpmpp2m")


@dataclasses.dataclass
class SamplerConfig:
    name: str = "pndm"              # one of SAMPLERS; pndm (the paper's) stays the default
    steps: int = 75                 # inference steps (PNDM: 76 UNet calls)
    guidance: float = 4.0           # classifier-free guidance (paper: 4.0; authors' demo: 3)
    height: Optional[int] = None    # None: the model's native size (512 for SD 2.1)
    width: Optional[int] = None
    device: str = "auto"            # auto | cpu | cuda | cuda:N
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"  # auto: fp16 on GPU, fp32 on CPU
    base_seed: int = 0              # mixed into every (prompt_id, attempt) seed


@dataclasses.dataclass
class QCConfig:
    enabled: bool = True
    convention: Literal["authors", "xrv"] = "authors"
    age_tolerance: float = 16.0     # years (authors' code); the paper uses the age model's SD
    # A `rv2 qc calibrate` file: its age tolerance (the SD of the age model's error on real
    # data, the paper's rule) replaces age_tolerance; it must describe these QC models.
    calibration: Optional[str] = None
    weights_dir: Optional[str] = None
    batch_size: int = 64


@dataclasses.dataclass
class EarlyRejectConfig:
    """Early QC rejection (`rv2.generate.early_reject`); off unless `at` names check points."""

    at: list[float] = dataclasses.field(default_factory=list)  # fractions of the UNet calls
    # Defaults: the knee of the demo-world sweep (docs/regeneration-study.md).
    margin: float = 0.3             # sex/race: stop when the wrong class leads by more (probability)
    age_margin: float = 4.8         # age: stop when beyond the tolerance by more (years)


@dataclasses.dataclass
class StoreConfig:
    image_format: Literal["png", "jpeg"] = "png"
    jpeg_quality: int = 95
    png_compress_level: int = 4     # lossless at any level; lower is faster
    shard_size: int = 1000          # images per shard folder
    channels: Literal["gray", "rgb"] = "gray"  # radiographs: mean of the VAE's 3 channels
    manifest_every: int = 200       # rewrite manifest.parquet every N finished prompts


@dataclasses.dataclass
class QuotaConfig:
    """Quota-driven regeneration (`rv2.generate.quota`); off while `targets` is None."""

    targets: Optional[str] = None   # "per-cell=N" or a CSV file: sex,race,age_bin[,finding],target
    # Attempts the store may hold, all runs together (None: max_attempts x the total target).
    budget_attempts: Optional[int] = None
    max_age_shift: int = 10         # years a re-aged prompt may move from its row's age
    seed: int = 0                   # orders each cell's candidate prompts, draws re-aged ages


@dataclasses.dataclass
class GenerateConfig(Config):
    VERSION = 1

    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    qc: QCConfig = dataclasses.field(default_factory=QCConfig)
    store: StoreConfig = dataclasses.field(default_factory=StoreConfig)
    early_reject: EarlyRejectConfig = dataclasses.field(default_factory=EarlyRejectConfig)
    quota: QuotaConfig = dataclasses.field(default_factory=QuotaConfig)
    batch_size: int = 8
    max_attempts: int = 4           # 1 + 3 retries
    # inprocess: one batch at a time; native: the pipeline scheduler of rv2._C (overlapped
    # stages, continuous batching); python: its Python twin; auto: native where built.
    executor: Literal["auto", "native", "python", "inprocess"] = "auto"
    slots: Optional[int] = None     # denoiser slots of the pipeline executors (default batch_size)
    # pipeline executors on CUDA (rv2.runtime.cuda_overlap): a stream per stage, the
    # denoiser's step in a CUDA graph; off until a GPU run shows they pay
    cuda_streams: bool = False
    cuda_graph: bool = False
    # pipeline executors: slots that would idle start a prompt's next attempt before its
    # current one is judged (kept if that fails, dropped if it passes); pays where a free
    # slot costs little (a CUDA graph's fixed batch, a small model)
    speculate: bool = False
    limit: Optional[int] = None     # only the first N prompts (smoke runs)
    allow_long_prompts: bool = False  # generate from prompts over 77 CLIP tokens (cut; warned)

    def validate(self) -> "GenerateConfig":
        if self.batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_attempts < 1:
            raise UserError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.sampler.steps < 1:
            raise UserError(f"sampler.steps must be >= 1, got {self.sampler.steps}")
        if self.sampler.name not in SAMPLERS:
            raise UserError(f"unknown sampler {self.sampler.name!r}; use one of {', '.join(SAMPLERS)}")
        er = self.early_reject
        if any(not 0 < f < 1 for f in er.at):
            raise UserError(f"early_reject.at: check points are fractions of the steps in (0, 1), "
                            f"got {er.at}")
        if er.at and self.sampler.name not in SLOT_SAMPLERS:
            raise UserError(f"early rejection needs a sampler with per-slot state "
                            f"({', '.join(SLOT_SAMPLERS)}); {self.sampler.name} has none")
        if not 0 <= er.margin < 1 or er.age_margin < 0:
            raise UserError(f"early_reject: margin must be in [0, 1) and age_margin >= 0 years, got "
                            f"{er.margin} and {er.age_margin}")
        if self.executor not in ("auto", "native", "python", "inprocess"):
            raise UserError(f"executor must be auto, native, python or inprocess, got {self.executor!r}")
        if self.slots is not None and self.slots < 1:
            raise UserError(f"slots must be >= 1, got {self.slots}")
        if not self.qc.age_tolerance > 0:
            raise UserError(f"qc.age_tolerance must be a positive number of years, got "
                            f"{self.qc.age_tolerance}")
        if self.quota.budget_attempts is not None and self.quota.budget_attempts < 1:
            raise UserError(f"quota.budget_attempts must be >= 1, got {self.quota.budget_attempts}")
        if self.quota.max_age_shift < 0:
            raise UserError(f"quota.max_age_shift must be >= 0 years, got {self.quota.max_age_shift}")
        if self.store.shard_size < 1:
            raise UserError(f"store.shard_size must be >= 1, got {self.store.shard_size}")
        return self
