"""The sampling loop (PNDM + classifier-free guidance) over the stage ports, and
the seeded initial noise.

`denoise` is pure with respect to its inputs (a fresh scheduler per call), so an
executor can run it in any grouping. With the eager stages on CPU in fp32 it
reproduces diffusers' `StableDiffusionPipeline` bit for bit for the same
initial latents.
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch

from rv2.errors import UserError
from rv2.generate.seeds import seed_for


def latent_shape(denoiser, decoder, height: int | None = None,
                 width: int | None = None) -> tuple[int, int, int]:
    """(channels, h, w) of the latents for an image of height x width pixels (default:
    the denoiser's native size)."""
    f = int(decoder.scale_factor)
    native = int(denoiser.sample_size) * f
    h, w = height or native, width or native
    if h % f or w % f:
        raise UserError(f"image size {h}x{w} must be a multiple of {f} for this VAE")
    return int(denoiser.in_channels), h // f, w // f


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
def denoise(denoiser, scheduler, cond: torch.Tensor, uncond: torch.Tensor | None,
            latents: torch.Tensor, steps: int = 75, guidance: float = 4.0,
            on_step: Callable[[int], None] | None = None) -> torch.Tensor:
    """Run the sampling scheduler from `latents` (B x C x h x w) with a `Denoiser`
    (`rv2.generate.stages`); `uncond` is the empty prompt's embedding (1 or B rows).
    Guidance <= 1 disables classifier-free guidance."""
    sched = copy.deepcopy(scheduler)  # PNDM keeps state: never share it
    device = latents.device
    sched.set_timesteps(steps, device=device)
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
        eps = denoiser.predict_noise(inp, t, context)
        if cfg:
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + guidance * (eps_c - eps_u)
        x = sched.step(eps, t, x, return_dict=False)[0]
        if on_step is not None:
            on_step(i)
    return x


def to_gray(images: torch.Tensor) -> torch.Tensor:
    """B x 3 x H x W -> B x 1 x H x W (channel mean); 1-channel input passes through."""
    return images if images.shape[1] == 1 else images.mean(dim=1, keepdim=True)
