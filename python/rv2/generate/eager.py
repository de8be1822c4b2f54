"""The eager diffusers implementation of the generation stages.

The only module of rv2's generation that knows diffusers' and transformers'
calling conventions and configs (`unet.config`, `vae.config.scaling_factor`,
`return_dict`); every other module sees the ports of `rv2.generate.stages`.
"""
from __future__ import annotations

from typing import Sequence

import torch

from rv2.generate.stages import StageSet


class EagerTextEncoder:
    """CLIP tokenizer + text model -> last hidden state, B x 77 x D."""

    def __init__(self, tokenizer, text_encoder, device):
        self.tokenizer, self.model, self.device = tokenizer, text_encoder, torch.device(device)
        self.use_mask = bool(getattr(text_encoder.config, "use_attention_mask", False))

    @torch.inference_mode()
    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        tok = self.tokenizer
        ids = tok(list(prompts), padding="max_length", max_length=tok.model_max_length,
                  truncation=True, return_tensors="pt")
        mask = ids.attention_mask.to(self.device) if self.use_mask else None
        return self.model(ids.input_ids.to(self.device), attention_mask=mask)[0]


class EagerDenoiser:
    """A diffusers UNet2DConditionModel as a noise predictor."""

    graph_capturable = True   # no host syncs in its forward: a CUDA graph can replay it

    def __init__(self, unet, device, dtype):
        self.unet, self.device, self.dtype = unet, torch.device(device), dtype
        self.in_channels = int(unet.config.in_channels)
        self.sample_size = int(unet.config.sample_size)

    @torch.inference_mode()
    def predict_noise(self, latents: torch.Tensor, timesteps: torch.Tensor,
                      context: torch.Tensor) -> torch.Tensor:
        return self.unet(latents, timesteps, encoder_hidden_states=context, return_dict=False)[0]


class EagerDecoder:
    """A diffusers AutoencoderKL's decoder: latents -> images in [0, 1]."""

    def __init__(self, vae):
        self.vae = vae
        self.scaling = float(vae.config.scaling_factor)
        self.scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        img = self.vae.decode(latents.to(self.vae.dtype) / self.scaling, return_dict=False)[0]
        return (img / 2 + 0.5).clamp(0, 1).float()


def prepare(components, device, dtype):
    """Move the networks to `device` / `dtype` (skipping no-ops: diffusers warns on
    repeated casts) and put them in eval mode."""
    for name in ("unet", "vae", "text_encoder"):
        m = getattr(components, name)
        p = next(m.parameters())
        if p.device != torch.device(device) or p.dtype != dtype:
            m.to(device=device, dtype=dtype)
        m.eval()
    return components


def eager_stages(components, device="cpu", dtype=torch.float32, qc=None) -> StageSet:
    """The stages over loaded SD components (`rv2.models.sd.SDComponents`)."""
    prepare(components, device, dtype)
    return StageSet(text_encoder=EagerTextEncoder(components.tokenizer, components.text_encoder, device),
                    denoiser=EagerDenoiser(components.unet, device, dtype),
                    decoder=EagerDecoder(components.vae),
                    scheduler=components.scheduler, qc=qc)


__all__ = ["EagerTextEncoder", "EagerDenoiser", "EagerDecoder", "eager_stages", "prepare"]
