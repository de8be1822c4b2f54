"""Sampling stages with batched inputs and outputs: text encoding, denoising
(PNDM + classifier-free guidance) and VAE decoding.

Each function is pure with respect to its inputs (a fresh scheduler per call),
so an executor (the in-process one here, a native scheduler later) can run
them in any grouping. On CPU in fp32 they reproduce diffusers'
`StableDiffusionPipeline` bit for bit for the same initial latents.
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch

from rv2.errors import UserError
from rv2.generate.seeds import seed_for


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available here; "
                           "use --set sampler.device=cpu")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    try:
        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    except KeyError:
        raise UserError(f"unknown dtype {dtype!r}; use auto, fp32, fp16 or bf16") from None


def latent_shape(components, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
    """(channels, h, w) of the latents for an image of height x width pixels."""
    vae_scale = 2 ** (len(components.vae.config.block_out_channels) - 1)
    native = int(components.unet.config.sample_size) * vae_scale
    h, w = height or native, width or native
    if h % vae_scale or w % vae_scale:
        raise UserError(f"image size {h}x{w} must be a multiple of {vae_scale} for this VAE")
    return int(components.unet.config.in_channels), h // vae_scale, w // vae_scale


def initial_latents(seeds: Sequence[int], shape: tuple[int, int, int],
                    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One CPU generator per image (as diffusers does with a list of generators), so an
    image's noise depends on its seed only, never on its batch or the device."""
    # Drawn in fp32 and then cast, so fp16/bf16 runs start from the same noise as fp32 ones.
    out = [torch.randn((1, *shape), generator=torch.Generator("cpu").manual_seed(int(s)),
                       dtype=torch.float32) for s in seeds]
    if not out:
        return torch.zeros((0, *shape), dtype=dtype, device=device)
    return torch.cat(out).to(device=device, dtype=dtype)


def latents_for(prompt_ids: Sequence[str], attempts: Sequence[int], shape, base_seed: int = 0,
                device="cpu", dtype=torch.float32) -> tuple[torch.Tensor, list[int]]:
    seeds = [seed_for(p, a, base_seed) for p, a in zip(prompt_ids, attempts)]
    return initial_latents(seeds, shape, device, dtype), seeds


@torch.inference_mode()
def encode_text(components, prompts: Sequence[str], device: torch.device | str = "cpu") -> torch.Tensor:
    """Last hidden state of the text encoder, B x 77 x D; padded/truncated to 77 tokens."""
    tok = components.tokenizer
    ids = tok(list(prompts), padding="max_length", max_length=tok.model_max_length,
              truncation=True, return_tensors="pt")
    enc = components.text_encoder
    mask = None
    if getattr(enc.config, "use_attention_mask", False):
        mask = ids.attention_mask.to(device)
    return enc(ids.input_ids.to(device), attention_mask=mask)[0]


@torch.inference_mode()
def denoise(components, cond: torch.Tensor, uncond: torch.Tensor | None, latents: torch.Tensor,
            steps: int = 75, guidance: float = 4.0,
            on_step: Callable[[int], None] | None = None) -> torch.Tensor:
    """Run the scheduler from `latents` (B x C x h x w); `uncond` is the empty prompt's
    embedding (1 or B rows). Guidance <= 1 disables classifier-free guidance."""
    sched = copy.deepcopy(components.scheduler)  # PNDM keeps state: never share it
    device = latents.device
    sched.set_timesteps(steps, device=device)
    unet = components.unet
    cfg = guidance > 1.0
    b = latents.shape[0]
    if cfg:
        if uncond is None:
            raise UserError("classifier-free guidance needs the empty prompt's embedding")
        context = torch.cat([uncond.expand(b, -1, -1).to(cond.dtype), cond])
    else:
        context = cond
    x = latents * sched.init_noise_sigma
    for i, t in enumerate(sched.timesteps):
        inp = torch.cat([x] * 2) if cfg else x
        inp = sched.scale_model_input(inp, t)
        eps = unet(inp, t, encoder_hidden_states=context, return_dict=False)[0]
        if cfg:
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + guidance * (eps_c - eps_u)
        x = sched.step(eps, t, x, return_dict=False)[0]
        if on_step is not None:
            on_step(i)
    return x


@torch.inference_mode()
def decode(components, latents: torch.Tensor) -> torch.Tensor:
    """VAE decode to B x 3 x H x W float32 in [0, 1]."""
    vae = components.vae
    img = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
    return (img / 2 + 0.5).clamp(0, 1).float()


def to_gray(images: torch.Tensor) -> torch.Tensor:
    """B x 3 x H x W -> B x 1 x H x W (channel mean); 1-channel input passes through."""
    return images if images.shape[1] == 1 else images.mean(dim=1, keepdim=True)
