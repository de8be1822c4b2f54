#!/usr/bin/env python
"""Generator fine-tuning throughput (training samples/s) through `train_generator` itself.

    .venv/bin/python tools/bench_train_generator.py [--steps 12] [--res 64] [--batch 4]
                                                    [--threads 1] [--gpu-steps 20] [--gpu-batch 8]

CPU rows (tiny random-weight UNet/VAE/CLIP from `rv2.models.sd.tiny_components`, images
written here as PNGs, fp32):
  pixels             VAE encode every step (the baseline)
  latent cache       moments encoded once, training reads them
  + grad checkpoint  latent cache with gradient checkpointing (memory for time)
  eager attention    latent cache with the non-SDPA attention processor
GPU rows (only when CUDA is available): a Stable Diffusion 2.1-base-sized UNet (865.9M),
VAE and OpenCLIP-H text encoder with random weights at 512x512, bf16 autocast, latent cache,
with and without gradient checkpointing. Here (no GPU) they are skipped with a message.

samples/s is the median of the per-step figures in the run's CSV after the warm-up steps;
ratios are against the first row of the same device, measured in the same run.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))

import numpy as np
import torch

WARMUP = 3


def write_images(folder: Path, n: int, size: int) -> Path:
    from rv2.data.imageio import save_png

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :int(size * 0.9)]
    for i in range(n):
        img = 0.5 + 0.3 * np.sin(xx / (4 + i % 7)) * np.cos(yy / (5 + i % 5)) + 0.05 * rng.random(xx.shape)
        save_png(folder / f"im{i:03d}.png", np.clip(img, 0, 1))
        (folder / f"im{i:03d}.txt").write_text(f"{40 + i % 40} year old WHITE female. finding {i} .")
    return folder


def run(tmp: Path, name: str, comps, images: Path, res: int, batch: int, steps: int,
        extra: list[str]) -> float:
    from rv2.finetune.config import TrainGeneratorConfig
    from rv2.finetune.train import train_generator

    out = tmp / name.replace(" ", "_").replace("+", "p")
    cfg = TrainGeneratorConfig().override([
        f"output_dir={out}", "data.source=folder", f"data.image_dir={images}",
        f"data.resolution={res}", "data.num_workers=0", f"optim.batch_size={batch}",
        f"optim.max_steps={steps}", "optim.warmup_steps=0", "checkpoint.every=0",
        "checkpoint.resume=none", "validation.every=0", "logging.every=1",
        "logging.progress=false", "logging.tensorboard=false", *extra])
    t = time.perf_counter()
    train_generator(cfg, comps)
    wall = time.perf_counter() - t
    with open(out / "logs" / "train_log.csv", newline="") as f:
        sps = [float(r["samples_per_s"]) for r in csv.DictReader(f)][WARMUP:]
    print(f"  {name}: {wall:.1f} s for {steps} steps", file=sys.stderr)
    return statistics.median(sps)


def table(title: str, rows: list[tuple[str, float]]) -> None:
    print(f"\n{title}")
    print(f"| {'config':<22} | {'samples/s':>10} | {'ratio':>6} |")
    print(f"|{'-' * 24}|{'-' * 12}|{'-' * 8}|")
    base = rows[0][1]
    for name, v in rows:
        print(f"| {name:<22} | {v:>10.2f} | {v / base:>5.2f}x |")


def sd21_components():
    """SD 2.1-base-sized UNet, VAE and text encoder with random weights (no download)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from rv2.models.sd import SDComponents, pndm_scheduler
    from rv2.prompts.tokenizer import clip_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512)
    tok = clip_tokenizer()
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=1024, intermediate_size=4096,
                                      num_hidden_layers=23, num_attention_heads=16,
                                      max_position_embeddings=77, hidden_act="gelu",
                                      projection_dim=512, bos_token_id=tok.bos_token_id,
                                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    n = sum(p.numel() for p in unet.parameters()) / 1e6
    print(f"  SD 2.1-sized UNet: {n:.1f}M parameters", file=sys.stderr)
    return SDComponents(unet, vae, te, tok, pndm_scheduler())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--res", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--gpu-steps", type=int, default=20)
    ap.add_argument("--gpu-batch", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from rv2.testing.sd import tiny_components

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        images = write_images(tmp / "img", 16, args.res + 16)
        rows = []
        for name, extra in [("pixels", []), ("latent cache", ["data.latent_cache=true"]),
                            ("+ grad checkpoint", ["data.latent_cache=true",
                                                   "model.gradient_checkpointing=true"]),
                            ("eager attention", ["data.latent_cache=true", "model.attention=eager"])]:
            comps = tiny_components(seed=0, sample_size=args.res)
            rows.append((name, run(tmp, name, comps, images, args.res, args.batch, args.steps, extra)))
        table(f"CPU, tiny components, {args.res}x{args.res}, batch {args.batch}, "
              f"{args.threads} thread(s), fp32", rows)

        if not torch.cuda.is_available():
            print("\nGPU rows skipped: torch.cuda.is_available() is False (run this on a lent GPU "
                  "for the SD 2.1-sized UNet).")
            return
        gimages = write_images(tmp / "gimg", 4 * args.gpu_batch, 512)
        grows = []
        for name, extra in [("bf16 latent cache", []),
                            ("+ grad checkpoint", ["model.gradient_checkpointing=true"])]:
            comps = sd21_components()
            grows.append((name, run(tmp, "gpu " + name, comps, gimages, 512, args.gpu_batch,
                                    args.gpu_steps, ["data.latent_cache=true",
                                                     "model.mixed_precision=bf16", *extra])))
            del comps
            torch.cuda.empty_cache()
        table(f"GPU {torch.cuda.get_device_name()}, SD 2.1-sized, 512x512, batch {args.gpu_batch}, "
              "bf16", grows)


if __name__ == "__main__":
    main()
