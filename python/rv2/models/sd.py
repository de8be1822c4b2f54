"""Stable Diffusion components: loading a local diffusers folder and the sampling
scheduler of the reference (tiny random-weight components for tests are in
`rv2.testing.sd`).

Folder layout (diffusers): model_index.json, unet/, vae/, text_encoder/,
tokenizer/, scheduler/. Nothing is downloaded; a missing folder or component
raises `MissingComponentError` naming what is absent.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rv2.errors import MissingInputError, UserError
from rv2.weights import check_safetensors

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")

# PNDM as configured by SD 2.1-base and RoentGen-v2 (reference: generation-and-qc.md).
PNDM_CONFIG = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                   num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1,
                   set_alpha_to_one=False, prediction_type="epsilon")
VAE_SCALING = 0.18215


class MissingComponentError(MissingInputError):
    pass


@dataclass
class SDComponents:
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in COMPONENTS}


def pndm_scheduler():
    from diffusers import PNDMScheduler

    return PNDMScheduler(**PNDM_CONFIG)


def ddpm_train_scheduler():
    """The noise schedule used for training (same betas as sampling)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_start=PNDM_CONFIG["beta_start"], beta_end=PNDM_CONFIG["beta_end"],
                         beta_schedule="scaled_linear", num_train_timesteps=1000,
                         prediction_type="epsilon", clip_sample=False)


def check_model_dir(path: str | Path) -> Path:
    """The folder exists and holds every component; else one error listing all that is missing."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise MissingComponentError(f"model folder not found: {p} (expected a diffusers folder "
                                    "with model_index.json, unet/, vae/, text_encoder/, tokenizer/)")
    missing = []
    if not (p / "model_index.json").is_file():
        missing.append("model_index.json")
    for comp in COMPONENTS:
        d = p / comp
        if comp == "scheduler":
            continue  # optional: rv2 uses the reference PNDM configuration when absent
        if not d.is_dir():
            missing.append(f"{comp}/")
        elif comp != "tokenizer" and not (d / "config.json").is_file():
            missing.append(f"{comp}/config.json")
        elif comp != "tokenizer" and not any(d.glob("*.safetensors")) and not any(d.glob("*.bin")):
            missing.append(f"{comp}/ weights (*.safetensors or *.bin)")
    if missing:
        raise MissingComponentError(f"model folder {p} is incomplete; missing: {', '.join(missing)}")
    for comp in ("unet", "vae", "text_encoder"):  # headers only: cheap, before any loading
        for f in sorted((p / comp).glob("*.safetensors")):
            check_safetensors(f, f"model component {comp}")
    return p


class ComponentLoadError(UserError):
    """A component folder that diffusers / transformers cannot load."""


def _load(comp: str, folder: Path, load):
    try:
        return load()
    except Exception as exc:  # noqa: BLE001 - diffusers/transformers/safetensors raise many kinds
        files = sorted(x.name for x in folder.glob("*") if x.is_file())
        raise ComponentLoadError(f"model component {comp} at {folder} cannot be loaded "
                                 f"(files {files}): corrupt or not a {comp} for this diffusers "
                                 f"version: {type(exc).__name__}: {exc}") from exc


def load_components(path: str | Path, torch_dtype=None) -> SDComponents:
    """Load UNet, VAE, text encoder, tokenizer and scheduler from a local diffusers folder."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    p = check_model_dir(path)
    kw = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    unet = _load("unet", p / "unet", lambda: UNet2DConditionModel.from_pretrained(p / "unet", **kw))
    vae = _load("vae", p / "vae", lambda: AutoencoderKL.from_pretrained(p / "vae", **kw))
    text_encoder = _load("text_encoder", p / "text_encoder",
                         lambda: CLIPTextModel.from_pretrained(p / "text_encoder", **kw))
    tokenizer = _load("tokenizer", p / "tokenizer",
                      lambda: CLIPTokenizer.from_pretrained(p / "tokenizer"))
    scheduler = (_load("scheduler", p / "scheduler",
                       lambda: PNDMScheduler.from_pretrained(p / "scheduler"))
                 if (p / "scheduler" / "scheduler_config.json").is_file() else pndm_scheduler())
    return SDComponents(unet, vae, text_encoder, tokenizer, scheduler)


def save_pipeline(components: SDComponents, out_dir: str | Path) -> Path:
    """Write the components as a diffusers StableDiffusionPipeline folder."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**components.as_dict(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(out_dir), safe_serialization=True)
    return Path(out_dir)
