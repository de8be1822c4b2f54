"""Tiny random-weight Stable Diffusion components, built in code, for tests and
CPU benchmarks (the real CLIP tokenizer, SD-shaped UNet / VAE / text encoder)."""
from __future__ import annotations

from rv2.models.sd import SDComponents, pndm_scheduler
from rv2.prompts.tokenizer import clip_tokenizer


def tiny_components(seed: int = 0, sample_size: int = 64, latent_channels: int = 4,
                    cross_attention_dim: int = 32, block_channels=(32, 64)) -> SDComponents:
    """Random-weight SD-shaped components small enough for CPU tests.

    Images are `sample_size` pixels; the VAE downsamples by 2 per extra block,
    so with two blocks latents are sample_size / 2. Uses the real CLIP tokenizer.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

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
