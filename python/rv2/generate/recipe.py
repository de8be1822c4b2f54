"""How to build a run's stages, as data: what a remote worker needs to load its own.

An executor that runs in this process is handed ready stages. One that runs in
other processes or on other machines (the Ray executor) cannot ship loaded
networks; it ships a `StageRecipe` (the generator folder and the settings), and
each worker builds its stages from it. `StageInfo` is what the driver must know
of the built stages to open the store (geometry, dtype, QC identity); every
worker reports it, so a worker that built something else is caught.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rv2.generate.config import GenerateConfig
from rv2.generate.sampler import latent_shape
from rv2.generate.slot_samplers import make_scheduler
from rv2.generate.stages import StageSet
from rv2.models.sd import load_components


@dataclass(frozen=True)
class StageInfo:
    """What the driver needs of a stage set (plain values: it crosses processes)."""

    device: str
    dtype: str
    latent_shape: tuple[int, int, int]
    qc_model_id: str | None
    qc_model_hash: str | None
    qc_convention: str | None

    @classmethod
    def of(cls, stages: StageSet, cfg: GenerateConfig) -> "StageInfo":
        qc = stages.qc
        shape = latent_shape(stages.denoiser, stages.decoder, cfg.sampler.height, cfg.sampler.width)
        return cls(str(stages.denoiser.device), str(stages.denoiser.dtype), tuple(shape),
                   qc.model_id if qc is not None else None,
                   qc.model_hash if qc is not None else None,
                   qc.convention if qc is not None else None)

    def same_run(self, other: "StageInfo") -> bool:
        """Whether two workers' stages make the same images (the device may differ)."""
        a, b = asdict(self), asdict(other)
        a.pop("device"), b.pop("device")
        return a == b


@dataclass(frozen=True)
class StageRecipe:
    """A picklable recipe of the eager stages: the generator folder and the settings
    (`GenerateConfig.to_dict()`); QC from `cfg.qc` (its weights folder must be readable
    where the recipe is built)."""

    model_dir: str
    cfg: dict

    @classmethod
    def of(cls, model_dir, cfg: GenerateConfig) -> "StageRecipe":
        return cls(str(Path(model_dir).resolve()), cfg.to_dict())

    def config(self) -> GenerateConfig:
        return GenerateConfig.from_dict(self.cfg, source="stage recipe")

    def build(self, device: str | None = None) -> StageSet:
        """Load the stages here; `device` overrides `cfg.sampler.device`."""
        cfg = self.config()
        if device is not None:
            cfg.sampler.device = device
        return build_stages(cfg, Path(self.model_dir), "auto", None, None)


def build_stages(cfg: GenerateConfig, model_dir: Path | None, qc_models: Any, components: Any,
                 stages: StageSet | None) -> StageSet:
    """The stage set of a run: the given one, or the eager stages over the given or
    loaded components; QC as asked (`qc_models`, else the weights of `cfg.qc`)."""
    from rv2.generate.eager import eager_stages
    from rv2.models.device import resolve_device, resolve_dtype

    if stages is not None:
        device = stages.denoiser.device
        qc = stages.qc if isinstance(qc_models, str) else qc_models
    else:
        device = resolve_device(cfg.sampler.device)
        qc = None if isinstance(qc_models, str) else qc_models
    if not cfg.qc.enabled:
        qc = None
    elif isinstance(qc_models, str) and qc_models == "auto" and qc is None:
        from rv2.models.qc_networks import load_qc_models

        qc = load_qc_models(cfg.qc.weights_dir, device, cfg.qc.convention, cfg.qc.batch_size)
    if qc is not None and hasattr(qc, "to"):
        qc.to(device)
    if stages is None:
        dtype = resolve_dtype(cfg.sampler.dtype, device)
        if components is None:
            components = load_components(model_dir, torch_dtype=dtype)
        stages = eager_stages(components, device, dtype, qc=qc)
    stages.qc = qc
    stages.scheduler = make_scheduler(cfg.sampler.name, stages.scheduler)  # --sampler
    return stages


__all__ = ["StageInfo", "StageRecipe", "build_stages"]
