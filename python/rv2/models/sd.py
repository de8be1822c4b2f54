"""Stable Diffusion components: loading a local diffusers folder, the sampling
scheduler of the reference, and tiny random-weight components for tests.

Folder layout (diffusers): model_index.json, unet/, vae/, text_encoder/,
tokenizer/, scheduler/. Nothing is downloaded; a missing folder or component
raises `MissingComponentError` naming what is absent.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rv2.errors import MissingInputError

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
    return p


def load_components(path: str | Path, torch_dtype=None) -> SDComponents:
    """Load UNet, VAE, text encoder, tokenizer and scheduler from a local diffusers folder."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    p = check_model_dir(path)
    kw = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    unet = UNet2DConditionModel.from_pretrained(p / "unet", **kw)
    vae = AutoencoderKL.from_pretrained(p / "vae", **kw)
    text_encoder = CLIPTextModel.from_pretrained(p / "text_encoder", **kw)
    tokenizer = CLIPTokenizer.from_pretrained(p / "tokenizer")
    scheduler = (PNDMScheduler.from_pretrained(p / "scheduler")
                 if (p / "scheduler" / "scheduler_config.json").is_file() else pndm_scheduler())
    return SDComponents(unet, vae, text_encoder, tokenizer, scheduler)


def tiny_components(seed: int = 0, sample_size: int = 64, latent_channels: int = 4,
                    cross_attention_dim: int = 32, block_channels=(32, 64)) -> SDComponents:
    """Random-weight SD-shaped components small enough for CPU tests.

    Images are `sample_size` pixels; the VAE downsamples by 2 per extra block,
    so with two blocks latents are sample_size / 2. Uses the real CLIP tokenizer.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from rv2.prompts.tokenizer import clip_tokenizer

    torch.manual_seed(seed)
    n = len(block_channels)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                        down_block_types=("DownEncoderBlock2D",) * n,
                        up_block_types=("UpDecoderBlock2D",) * n,
                        block_out_channels=tuple(block_channels), layers_per_block=1,
                        norm_num_groups=16, sample_size=sample_size)
    latent = sample_size // (2 ** (n - 1))
    unet = UNet2DConditionModel(sample_size=latent, in_channels=latent_channels,
                                out_channels=latent_channels, layers_per_block=1,
                                block_out_channels=tuple(block_channels),
                                down_block_types=("CrossAttnDownBlock2D",) + ("DownBlock2D",) * (n - 1),
                                up_block_types=("UpBlock2D",) * (n - 1) + ("CrossAttnUpBlock2D",),
                                cross_attention_dim=cross_attention_dim, attention_head_dim=8,
                                norm_num_groups=16)
    tok = clip_tokenizer()
    text_cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=cross_attention_dim,
                              intermediate_size=2 * cross_attention_dim, num_hidden_layers=2,
                              num_attention_heads=4, max_position_embeddings=77,
                              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id)
    text_encoder = CLIPTextModel(text_cfg)
    return SDComponents(unet.eval(), vae.eval(), text_encoder.eval(), tok, pndm_scheduler())


def save_pipeline(components: SDComponents, out_dir: str | Path) -> Path:
    """Write the components as a diffusers StableDiffusionPipeline folder."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**components.as_dict(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(out_dir), safe_serialization=True)
    return Path(out_dir)
