#!/usr/bin/env python
"""Engines against eager, measured in the same run: latency per call and speed-up.

    tools/bench_engines.py                       # CPU: demo models + DenseNet-121 classifier
    tools/bench_engines.py --sd                  # + SD 2.1-sized text encoder and VAE decoder
    tools/bench_engines.py --device cuda --sd    # GPU rows (fp16 engines), whole generation
    tools/bench_engines.py --backends onnxruntime,aotinductor
    tools/bench_engines.py --sets densenet --backends aotinductor

Engines are built with `rv2.engines.build` into --cache (default build/bench-engines),
so a second run reuses them (AOTInductor compiles take minutes on 2 cores). Every
row times the eager module and the engine on the same inputs, after warm-up, as
the median of --repeats calls; ratio = eager ms / engine ms (> 1: the engine is
faster). Targets (CPU): classifier at batch 1 >= 1.5x, demo UNet >= 1.2x.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from importlib.resources import files
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from rv2.engines.build import Sources, build_engines  # noqa: E402
from rv2.engines.profile import TargetProfile  # noqa: E402
from rv2.engines.runtime import load  # noqa: E402
from rv2.export import graphs  # noqa: E402

DEMO = Path(str(files("rv2.demo") / "weights"))
TARGETS = {("classifier", 1): 1.5, ("unet", None): 1.2}

# Read by tools/gpu_check.py (ast, never imported): the GPU row of issue 13, whole
# generation from AOTInductor engines against eager at SD 2.1 size, QC and writing included.
# Its engine compiles take about 4 minutes on an H200, so on the GPU it runs in a second
# call (`--only bench_engines`); the dry run times one small set every time.
GPU_CHECK = {
    "order": 30,
    "by_default": False,
    "timeout_s": 330,
    "dry_timeout_s": 300,
    "gpu": ["--device", "cuda", "--backends", "aotinductor", "--sets", "", "--whole", "sd21",
            "--whole-images", "16", "--json", "{json}"],
    "dry": ["--device", "cpu", "--backends", "onnxruntime", "--sets", "densenet", "--repeats", "2",
            "--max-batch", "1", "--json", "{json}"],
}


def timed(fn, repeats: int, sync) -> float:
    fn()
    fn()
    sync()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return statistics.median(out) * 1000


def make_classifier(folder: Path, size: int = 224) -> Path:
    from rv2.classify import model_dir as md
    from rv2.data.schema import CHEXPERT_LABELS
    from rv2.models.densenet import densenet121, model_config

    if (folder / md.WEIGHTS).is_file():
        return folder
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    md.save_weights(densenet121(len(CHEXPERT_LABELS)).eval(), folder / md.WEIGHTS)
    (folder / md.MODEL_CONFIG).write_text(json.dumps(model_config(CHEXPERT_LABELS, size, 0.5, 0.25)))
    (folder / md.THRESHOLDS).write_text(json.dumps({"labels": list(CHEXPERT_LABELS),
                                                    "thresholds": [0.5] * 14, "rule": ">="}))
    return folder


def make_sd_sized(folder: Path) -> Path:
    """A generator folder with SD 2.1-sized text encoder (OpenCLIP ViT-H text tower, 1024
    wide, 23 layers) and VAE (512 x 512 images), random weights; a tiny UNet (its engine
    is not built for these rows: a full-size UNet is a GPU row)."""
    if (folder / "model_index.json").is_file():
        return folder
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from rv2.models.sd import SDComponents, pndm_scheduler, save_pipeline
    from rv2.prompts.tokenizer import clip_tokenizer

    torch.manual_seed(0)
    tok = clip_tokenizer()
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=1024, intermediate_size=4096,
                                      num_hidden_layers=23, num_attention_heads=16,
                                      max_position_embeddings=77, hidden_act="gelu",
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                      pad_token_id=tok.pad_token_id))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512)
    unet = UNet2DConditionModel(sample_size=64, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=1024, attention_head_dim=8, norm_num_groups=16)
    save_pipeline(SDComponents(unet.eval(), vae.eval(), te.eval(), tok, pndm_scheduler()), folder)
    return folder


def make_sd21_full(folder: Path) -> Path:
    """A generator folder at SD 2.1 size throughout (865.9M-parameter UNet), random weights."""
    if (folder / "model_index.json").is_file():
        return folder
    from bench_generate import sd21_components  # tools/ is this script's folder
    from rv2.models.sd import save_pipeline

    save_pipeline(sd21_components(torch.float16, "cuda"), folder)
    return folder


def bench_set(name, profile, sources, only, cache: Path, backends, repeats, device, rows, log,
              max_batch: int | None = None):
    out = cache / name
    index = build_engines(profile, out, sources, backends=backends, device=device, e2e_steps=0,
                          only=only, echo=log)
    gspecs = {}
    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    for comp in only or index["components"]:
        if comp not in gspecs:
            gspecs.update(_specs(sources, comp, profile))
        spec = gspecs[comp]
        ref = spec.module.to(dev).eval()
        if profile.precision != "fp32":
            ref = graphs.in_precision(ref, profile.precision).to(dev)
        for b in profile.component(comp).batch_sizes:
            if max_batch is not None and b > max_batch:
                continue
            xs = tuple(x.to(dev) for x in spec.example(b))
            with torch.inference_mode():
                eager = timed(lambda: ref(*xs), repeats, sync)
            for backend in index["components"][comp]["engines"]:
                runner = load(out, device=device, backend=backend).runner(comp)
                ms = timed(lambda: runner(*xs), repeats, sync)
                rows.append({"set": name, "component": comp, "batch": b, "backend": backend,
                             "eager_ms": eager, "engine_ms": ms, "ratio": eager / ms})
                log(_fmt(rows[-1]))


def _specs(sources: Sources, comp: str, profile: TargetProfile):
    if comp in ("text_encoder", "unet", "vae_decoder"):
        lat = profile.component("unet").latent if "unet" in profile.components else None
        return graphs.generator_graphs(sources.generator, latent=lat)
    if comp.startswith("qc_"):
        from rv2.models.qc_networks import load_qc_models

        img = profile.component(comp).image[1]
        return graphs.qc_graphs(load_qc_models(sources.qc_dir), img)
    return {"classifier": graphs.classifier_graph(sources.classifier)}


def _fmt(r: dict) -> str:
    return (f"{r['set']:8s} {r['component']:13s} {r['batch']:5d} {r['backend']:12s} "
            f"{r['eager_ms']:10.2f} {r['engine_ms']:10.2f} {r['ratio']:7.2f}x")


def whole_generation_cuda(sd_dir: Path, engines_dir: Path, steps: int, n: int) -> list[dict]:
    """Images/s of the whole generation (75 steps, guidance 4, QC by ResNet-34-sized networks
    at the authors' formats, accepted images written), eager against the engines in the same
    run, and each one's share of the card's bf16 matmul rate measured in the same run."""
    import tempfile

    from bench_generate import write_qc_files  # tools/ is this script's folder
    from rv2.generate.config import GenerateConfig
    from rv2.generate.pipeline import generate_dataset
    from rv2.models.qc_networks import load_qc_models
    from rv2.testing.prompts import prompts_table

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = timed(lambda: a @ a, 10, torch.cuda.synchronize)
    tflops = 2 * 8192 ** 3 / (ms / 1000) / 1e12
    del a
    cfg = GenerateConfig().override([f"sampler.steps={steps}", "sampler.guidance=4.0",
                                     "sampler.device=cuda", "sampler.dtype=fp16",
                                     f"batch_size={n}", "max_attempts=1"])
    from rv2.models.sd import load_components

    comp = load_components(sd_dir, torch_dtype=torch.float16)  # loaded once, as the engines are
    for m in (comp.unet, comp.vae, comp.text_encoder):
        m.to("cuda")
    ways = {"eager (fp16)": {"components": comp},
            "engines (aotinductor, fp16)": {"stages": load(engines_dir, device="cuda").stages()}}
    rows = []
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        qc_dir = write_qc_files(tmp / "qc", "real", 224)
        qc = load_qc_models(qc_dir, "cuda", "authors", cfg.qc.batch_size)
        for name, given in ways.items():
            for tag, k in (("warm", 2), ("timed", n)):  # warm-up: allocator, kernels, autotune
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                s = generate_dataset(prompts_table(k), sd_dir, tmp / f"{len(rows)}-{tag}", cfg,
                                     qc_models=qc, progress=False, **given)
                torch.cuda.synchronize()
                wall = time.perf_counter() - t0
            ips = n / wall
            # One SD 2.1 image at 75 steps with guidance is about 125 TFLOP (docs/gpu-check.md).
            rows.append({"set": "whole", "component": "generation + QC + write", "batch": n,
                         "backend": name, "wall_s": round(wall, 3), "images_per_s": round(ips, 4),
                         "of_bf16_matmul": round(ips * 125.0 / tflops, 4),
                         "qc_passed": s.get("accepted")})
    for r in rows:
        r["ratio"] = round(r["images_per_s"] / rows[0]["images_per_s"], 3)
        r["bf16_tflops"] = round(tflops, 1)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backends", default="onnxruntime,aotinductor")
    ap.add_argument("--sets", default="demo,densenet",
                    help="row sets: demo (bundled demo models), densenet (DenseNet-121 classifier "
                         "at 224), sd (SD 2.1-sized text encoder and VAE decoder)")
    ap.add_argument("--sd", action="store_true", help="add the SD 2.1-sized rows (minutes on CPU)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--max-batch", type=int, default=None, help="time only batch sizes up to this")
    ap.add_argument("--cache", default="build/bench-engines")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    ap.add_argument("--whole", metavar="GENERATOR_DIR", default=None,
                    help="GPU: images/s of the whole generation (75 steps, guidance 4) from engines "
                         "of this full-size generator folder (or 'sd21': SD 2.1-sized, random "
                         "weights), and its share of the bf16 matmul rate")
    ap.add_argument("--whole-images", type=int, default=16)
    args = ap.parse_args()
    cache = Path(args.cache)
    backends = [b for b in args.backends.split(",") if b]
    cuda = args.device.startswith("cuda")
    prec = "fp16" if cuda else "fp32"
    dev_kind = "cuda" if cuda else "cpu"
    if cuda:
        backends = backends + (["tensorrt"] if "tensorrt" not in backends else [])
    rows: list[dict] = []
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, backends {backends}")
    print(f"{'set':8s} {'component':13s} {'batch':>5s} {'backend':12s} {'eager ms':>10s} "
          f"{'engine ms':>10s} {'ratio':>8s}")

    def prof(name, comps):
        return TargetProfile(target=name, device=dev_kind, precision=prec, backends=backends,
                             components=comps).validate()

    demo = prof("demo", {"text_encoder": {"batch_sizes": [1, 8]},
                         "unet": {"batch_sizes": [2, 16], "latent": [4, 16, 16]},
                         "vae_decoder": {"batch_sizes": [1, 8]},
                         "qc_sex": {"batch_sizes": [1, 8], "image": [1, 64, 64]},
                         "qc_race": {"batch_sizes": [1, 8], "image": [1, 64, 64]},
                         "qc_age": {"batch_sizes": [1, 8], "image": [1, 64, 64]}})
    log = lambda s: print(s, file=sys.stderr) if not s.startswith(("demo ", "sd ", "densenet")) else print(s)  # noqa: E731
    sets = {s.strip() for s in args.sets.split(",")} | ({"sd"} if args.sd else set())
    if "demo" in sets:
        bench_set("demo", demo, Sources(generator=DEMO / "generator", qc_dir=DEMO / "qc"), None, cache,
                  backends, args.repeats, args.device, rows, log, args.max_batch)
    if "densenet" in sets:
        clf = make_classifier(cache / "densenet121-224")
        bench_set("densenet", prof("densenet", {"classifier": {"batch_sizes": [1, 16]}}),
                  Sources(classifier=clf), ["classifier"], cache, backends, args.repeats, args.device,
                  rows, log, args.max_batch)
    if "sd" in sets:
        sd = make_sd_sized(cache / "sd21-sized")
        p = prof("sd", {"text_encoder": {"batch_sizes": [1, 8]},
                        "unet": {"batch_sizes": [2, 8], "latent": [4, 64, 64]},
                        "vae_decoder": {"batch_sizes": [1, 4], "latent": [4, 64, 64]}})
        bench_set("sd", p, Sources(generator=sd), ["text_encoder", "vae_decoder"], cache, backends,
                  max(3, args.repeats // 3), args.device, rows, log)
    if args.whole:
        if not cuda:
            print("--whole is a GPU row (75 steps at SD size take hours on a CPU); skipped")
        else:
            gen = Path(args.whole) if args.whole != "sd21" else make_sd21_full(cache / "sd21-full")
            p = prof("whole", {"text_encoder": {"batch_sizes": [1, args.whole_images]},
                               "unet": {"batch_sizes": [2, 2 * args.whole_images]},
                               "vae_decoder": {"batch_sizes": [1, args.whole_images]}})
            build_engines(p, cache / "whole", Sources(generator=gen), backends=backends,
                          device=args.device, e2e_steps=0, echo=log)
            for w in whole_generation_cuda(gen, cache / "whole", 75, args.whole_images):
                rows.append(w)
                print(f"whole generation, {w['backend']}: {w['images_per_s']:.3f} images/s "
                      f"({w['ratio']:.2f}x eager); card bf16 {w['bf16_tflops']:.0f} TFLOP/s; "
                      f"{w['of_bf16_matmul'] * 100:.1f}% of it (goal: engines >= 60%)")
    print()
    for (comp, batch), target in TARGETS.items():
        hits = [r for r in rows if r["set"] in ("demo", "densenet") and r["component"] == comp
                and (batch is None or r["batch"] == batch)]
        if hits and not cuda:
            best = max(hits, key=lambda r: r["ratio"])
            verdict = "met" if best["ratio"] >= target else "NOT met"
            print(f"target {comp}{'' if batch is None else f' batch {batch}'} >= {target}x eager: best "
                  f"{best['ratio']:.2f}x ({best['backend']}, batch {best['batch']}): {verdict}")
    if args.json:  # the shape tools/gpu_check.py renders: title, rows, notes
        Path(args.json).write_text(json.dumps(
            {"title": f"engines against eager ({args.device}, {prec})", "rows": rows,
             "notes": ["ratio = eager ms / engine ms per component (> 1: the engine is faster); "
                       "whole-generation rows: images/s against eager in the same run",
                       f"torch {torch.__version__}, threads {torch.get_num_threads()}"]},
            indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
