#!/usr/bin/env python
"""Throughput of `rv2 eval-generator`'s parts on CPU, generation reported apart.

    .venv/bin/python tools/bench_eval_generator.py [--threads 2] [--real] [--batches 1,16,64]

Rows (images/s, best of --repeat runs after one warm-up):
  features   each scoring net of the demo eval bundle (64 px); with --real also the real
             architectures with random weights: FID Inception-v3 (299 px), torchxrayvision
             DenseNet-121 (224 px) and BioViL ResNet-50 (448 px) on 512 px inputs.
             Ratio: against the same net at batch 1 (the baseline of the table).
  metrics    MS-SSIM of image pairs (rv2 against pytorch-msssim on the same pairs, its
             baseline); Fréchet distance of two 2048-d feature sets (rv2's eigh form against
             clean-fid's scipy sqrtm, per call, shown as feature rows/s).
  generation the bundled demo generator (64 px, 15 PNDM steps, guidance 3) at each batch;
             ratio against batch 1. Generation dominates a real run; it is kept apart.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def best_time(fn, repeat: int) -> float:
    fn()  # warm-up
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return min(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--real", action="store_true", help="also the real architectures (minutes)")
    ap.add_argument("--no-generation", action="store_true")
    args = ap.parse_args()

    import numpy as np
    import torch
    from rv2.demo.pipeline import WEIGHTS_DIR
    from rv2.evaluate import feature_nets as fn
    from rv2.evaluate.generator_metrics import fid_from_features, ms_ssim

    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    rows: list[tuple[str, str, int, float, float | None, str]] = []
    g = torch.Generator().manual_seed(0)

    def images(n, size):
        return torch.rand((n, 1, size, size), generator=g)

    # ---- feature extraction
    nets = fn.load_nets(["inception", "disease", "biovil"], bundle=str(WEIGHTS_DIR / "eval"))
    suites = [(f"demo {role} ({type(n.module).__name__})", n, 64) for role, n in nets.items() if n]
    if args.real:
        torch.manual_seed(0)
        xrv = __import__("torchxrayvision").models.DenseNet(weights=None)
        suites += [("Inception-v3 FID (299 px)", fn.InceptionFeatures(fn.build_inception("fid").eval(),
                                                                       "fid", "random"), 512),
                   ("xrv DenseNet-121 (224 px)", fn.XRVDenseNet(xrv, "random", []), 512),
                   ("BioViL ResNet-50 (448 px)", fn.BioViLEncoder(fn.build_biovil().eval(), "random"), 512)]
    for name, net, size in suites:
        base = None
        for b in batches:
            x = images(b, size)
            t = best_time(lambda net=net, x=x, b=b: net.features(x, batch_size=b), args.repeat)
            ips = b / t
            base = base or ips
            rows.append(("features", name, b, ips, ips / base, "vs batch 1"))

    # ---- metrics
    try:
        import pytorch_msssim
    except ImportError:
        pytorch_msssim = None
    for b in batches:
        x, y = images(b, 192), images(b, 192)
        ours = b / best_time(lambda x=x, y=y: ms_ssim(x, y), args.repeat)
        if pytorch_msssim is not None:
            peer = b / best_time(lambda x=x, y=y: pytorch_msssim.ms_ssim(
                x.double(), y.double(), data_range=1.0, size_average=False), args.repeat)
            rows.append(("metrics", "MS-SSIM 192 px, float64 (pytorch-msssim)", b, peer, 1.0, "baseline"))
            rows.append(("metrics", "MS-SSIM 192 px, float64 (rv2)", b, ours, ours / peer,
                         "vs pytorch-msssim"))
        else:
            rows.append(("metrics", "MS-SSIM 192 px, float64 (rv2)", b, ours, None, "no peer installed"))
    rng = np.random.default_rng(0)
    fa, fb = rng.normal(size=(2500, 2048)), rng.normal(size=(2500, 2048)) + 0.1
    ours = len(fa) / best_time(lambda: fid_from_features(fa, fb), 1)
    try:
        from cleanfid.fid import frechet_distance as cf

        def peer_fid():
            cf(fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False))

        peer = len(fa) / best_time(peer_fid, 1)
        rows.append(("metrics", "Fréchet distance 2500 x 2048 (clean-fid sqrtm)", len(fa), peer, 1.0,
                     "baseline"))
        rows.append(("metrics", "Fréchet distance 2500 x 2048 (rv2 eigh)", len(fa), ours, ours / peer,
                     "vs clean-fid"))
    except ImportError:
        rows.append(("metrics", "Fréchet distance 2500 x 2048 (rv2 eigh)", len(fa), ours, None,
                     "no peer installed"))

    # ---- generation (apart)
    if not args.no_generation:
        from rv2.generate.eager import eager_stages
        from rv2.generate.sampler import denoise, initial_latents, latent_shape
        from rv2.models.sd import load_components

        st = eager_stages(load_components(WEIGHTS_DIR / "generator"))
        shape = latent_shape(st.denoiser, st.decoder)
        uncond = st.text_encoder.encode([""])
        base = None
        for b in batches:
            def gen(b=b):
                cond = st.text_encoder.encode(["54 year old WHITE female. Small left pleural effusion ."] * b)
                lat = denoise(st.denoiser, st.scheduler, cond, uncond,
                              initial_latents(range(b), shape), 15, 3.0)
                st.decoder.decode(lat)

            ips = b / best_time(gen, 1)
            base = base or ips
            rows.append(("generation", "demo generator 64 px, 15 steps, CFG 3", b, ips, ips / base,
                         "vs batch 1"))

    print(f"\nrv2 eval-generator throughput (CPU, {args.threads} threads, torch {torch.__version__})\n")
    print("| part | item | batch | images/s | ratio | ratio is |")
    print("|---|---|---:|---:|---:|---|")
    for part, item, b, ips, ratio, what in rows:
        r = "-" if ratio is None else f"{ratio:.2f}"
        print(f"| {part} | {item} | {b} | {ips:,.1f} | {r} | {what} |")


if __name__ == "__main__":
    main()
