"""Seeds and sampling stages: determinism and parity with diffusers."""
from __future__ import annotations

import numpy as np
import torch
from gen_helpers import STEPS, tiny
from rv2.generate.eager import eager_stages
from rv2.generate.sampler import denoise, initial_latents, latent_shape, latents_for
from rv2.generate.seeds import seed_for


def test_seeds_depend_only_on_prompt_and_attempt():
    a = seed_for("p1", 0)
    assert a == seed_for("p1", 0) and 0 <= a < 2 ** 63
    assert len({seed_for("p1", k) for k in range(4)}) == 4
    assert seed_for("p1", 0) != seed_for("p2", 0)
    assert seed_for("p1", 0, base_seed=1) != a
    # pinned: a change of the seed function changes every image of every store
    assert seed_for("p0000", 0) == seed_for("p0000", 0, base_seed=0)
    lat1 = initial_latents([seed_for("x", 0), seed_for("y", 1)], (4, 8, 8))
    lat2 = initial_latents([seed_for("y", 1)], (4, 8, 8))
    assert torch.equal(lat1[1:], lat2)


def test_matches_diffusers_pipeline_fp32():
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(1)
    comp = tiny(0)
    st = eager_stages(comp)
    prompts = ["60 year old WHITE female. Small left effusion .", "30 year old ASIAN male. Normal ."]
    shape = latent_shape(st.denoiser, st.decoder)
    lat, _ = latents_for(["a", "b"], [0, 0], shape)
    pipe = StableDiffusionPipeline(**comp.as_dict(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(prompts, num_inference_steps=STEPS, guidance_scale=4.0, latents=lat.clone(),
               output_type="pt").images
    cond = st.text_encoder.encode(prompts)
    uncond = st.text_encoder.encode([""])
    ours = st.decoder.decode(denoise(st.denoiser, st.scheduler, cond, uncond, lat.clone(), STEPS, 4.0))
    assert ours.shape == ref.shape == (2, 3, 32, 32)
    assert (ours - ref).abs().max().item() <= 1e-6


def test_batch_composition_does_not_change_an_image():
    torch.set_num_threads(1)
    st = eager_stages(tiny(0))
    shape = latent_shape(st.denoiser, st.decoder)
    prompts = {"a": "50 year old BLACK male. Cardiomegaly .", "b": "70 year old WHITE female. Normal .",
               "c": "40 year old ASIAN female. Edema ."}
    uncond = st.text_encoder.encode([""])

    def run(ids):
        lat, _ = latents_for(ids, [1] * len(ids), shape)
        cond = st.text_encoder.encode([prompts[i] for i in ids])
        return st.decoder.decode(denoise(st.denoiser, st.scheduler, cond, uncond, lat, STEPS, 4.0))

    together = run(["a", "b", "c"])
    alone = run(["b"])
    reordered = run(["c", "b"])
    assert (together[1] - alone[0]).abs().max() <= 1e-5
    assert (reordered[1] - alone[0]).abs().max() <= 1e-5
    from rv2._native import to_uint8

    d = np.abs(to_uint8(together[1].numpy()).astype(int) - to_uint8(alone[0].numpy()).astype(int))
    assert d.max() <= 1
