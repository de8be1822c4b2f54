#!/usr/bin/env python
"""Classifier throughput: training and `predict` images per second, CPU and (if lent) GPU.

    .venv/bin/python tools/bench_classify.py [--image-size 224] [--batch-size 16] [--steps 4]
                                             [--images 64] [--threads 2] [--devices cpu,cuda]

Rows, per device:
  train step     DenseNet-121 forward+backward+AdamW on in-memory tensors (model only)
  train pipeline `train_classifier` on PNGs written here (decode, crop, resize, loss, optimizer;
                 the history's images/s of one epoch, validation excluded)
  predict step   forward + sigmoid on in-memory tensors (model only)
  predict pipeline `rv2.classify.predict` over the same PNG manifest
Model-only rows are measured in fp32 (NCHW), fp32 channels-last and, on CUDA, bf16
autocast + channels-last (what training and predict use there). Ratios are against the fp32 row
of the same kind on the first device listed (CPU fp32 with the default devices), measured in the
same run.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

# Read by tools/gpu_check.py (ast, never imported): how the one-call GPU check runs this.
# On the GPU the baseline is the GPU's own fp32 row (the CPU rows would spend the budget).
GPU_CHECK = {
    "order": 20,
    "timeout_s": 100,
    "dry_timeout_s": 300,
    "gpu": ["--devices", "cuda", "--image-size", "224", "--batch-size", "64", "--steps", "10",
            "--images", "256", "--workers", "4", "--threads", "8", "--json", "{json}"],
    "dry": ["--devices", "cpu", "--image-size", "32", "--batch-size", "2", "--steps", "1",
            "--images", "4", "--threads", "2", "--json", "{json}"],
}


def write_dataset(folder: Path, n: int, size: int) -> Path:
    from PIL import Image
    from rv2.data.schema import CHEXPERT_LABELS

    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        img = (rng.random((size, size + size // 8)) * 255).astype(np.uint8)
        Image.fromarray(img, mode="L").save(folder / "images" / f"{i}.png")
        rows.append({"image_id": f"b{i}", "path": f"images/{i}.png", "patient_id": f"p{i}",
                     "study_id": f"s{i}", "dataset": "bench", "view": "PA", "sex": "F", "age": 50.0,
                     "age_bin": "40-60", "race": "White", "split": "train",
                     **{c: float(rng.random() < 0.3) for c in CHEXPERT_LABELS}})
    path = folder / "manifest.parquet"
    pd.DataFrame(rows).to_parquet(path, index=False)
    return path


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def model_step(dev, size, bs, steps, train: bool, channels_last: bool, amp: bool) -> float:
    from rv2.classify.losses import masked_bce
    from rv2.models.densenet import densenet121

    torch.manual_seed(0)
    m = densenet121().to(dev)
    x = torch.randn(bs, 3, size, size, device=dev)
    t = (torch.rand(bs, 14, device=dev) < 0.3).float()
    mask = torch.ones_like(t)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else (lambda: torch.autocast(
        dev.type, enabled=False))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.05)
    m.train(train)

    def one():
        if train:
            with ctx():
                loss = masked_bce(m(x), t, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        else:
            with torch.inference_mode(), ctx():
                torch.sigmoid(m(x).float())

    one()  # warm-up
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    sync(dev)
    return bs * steps / (time.perf_counter() - t0)


def pipeline_train(dev, manifest: Path, work: Path, size, bs, workers) -> float:
    from rv2.classify import ClassifierConfig, train_classifier

    out = work / f"train_{dev.type}"
    cfg = ClassifierConfig(strategy="real", real=str(manifest), val=str(manifest), out=str(out),
                           train_split=None, val_split=None, image_size=size, init="scratch", epochs=1,
                           batch_size=bs, num_workers=workers, device=str(dev), progress=False,
                           norm_mean=0.5, norm_std=0.25)
    train_classifier(cfg)
    return float(pd.read_csv(out / "history.csv")["train_images_per_s"].iloc[0])


def pipeline_predict(dev, manifest: Path, work: Path, bs, workers) -> float:
    from rv2.classify import predict

    model = work / f"train_{dev.type}"
    predict(model, manifest, batch_size=bs, device=str(dev), num_workers=workers, progress=False)  # warm-up
    t0 = time.perf_counter()
    p = predict(model, manifest, batch_size=bs, device=str(dev), num_workers=workers, progress=False)
    return len(p) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per model-only row")
    ap.add_argument("--images", type=int, default=64, help="PNG images for the pipeline rows")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers for the pipeline rows")
    ap.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default=None, help="also write the table here")
    args = ap.parse_args()
    for name in args.devices.split(","):
        if torch.device(name).type == "cuda" and not torch.cuda.is_available():
            raise SystemExit(f"bench_classify: --devices {args.devices}: CUDA is not available here")
    torch.set_num_threads(args.threads)
    size, bs = args.image_size, args.batch_size
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest = write_dataset(work / "data", args.images, size + size // 7)
        for name in args.devices.split(","):
            dev = torch.device(name)
            variants = [("fp32", False, False), ("fp32+channels_last", True, False)]
            if dev.type == "cuda":
                variants.append(("bf16+channels_last", True, True))
            for kind, train in (("train step", True), ("predict step", False)):
                for label, cl, amp in variants:
                    ips = model_step(dev, size, bs, args.steps, train, cl, amp)
                    rows.append({"device": name, "row": kind, "precision": label, "images/s": ips})
                    print(f"  {name:5s} {kind:16s} {label:18s} {ips:9.1f} img/s", flush=True)
            amp = "bf16+channels_last" if dev.type == "cuda" else "fp32"
            ips = pipeline_train(dev, manifest, work, size, bs, args.workers)
            rows.append({"device": name, "row": "train pipeline", "precision": amp, "images/s": ips})
            print(f"  {name:5s} train pipeline   {amp:18s} {ips:9.1f} img/s", flush=True)
            ips = pipeline_predict(dev, manifest, work, bs, args.workers)
            rows.append({"device": name, "row": "predict pipeline", "precision": amp, "images/s": ips})
            print(f"  {name:5s} predict pipeline {amp:18s} {ips:9.1f} img/s", flush=True)
    df = pd.DataFrame(rows)
    first = args.devices.split(",")[0]
    base = {r: df[(df.device == first) & (df.row == r) & (df.precision == "fp32")]["images/s"]
            for r in df.row.unique()}
    col = f"x vs {first} fp32"
    df[col] = [v / float(base[r].iloc[0]) if len(base[r]) else float("nan")
               for r, v in zip(df.row, df["images/s"])]
    # a pipeline row against the model-only row of its device and precision: what decoding,
    # loading and bookkeeping leave of the model's own throughput
    step = {(d, r.split()[0], p): v for d, r, p, v in zip(df.device, df.row, df.precision,
                                                         df["images/s"]) if r.endswith("step")}
    df["of model-only"] = [v / step[(d, r.split()[0], p)] if r.endswith("pipeline")
                           and (d, r.split()[0], p) in step else float("nan")
                           for d, r, p, v in zip(df.device, df.row, df.precision, df["images/s"])]
    setting = (f"DenseNet-121, {size}x{size}, batch {bs}, {args.threads} CPU thread(s), "
               f"{args.workers} loader worker(s); torch {torch.__version__}"
               + (f"; GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
    print(f"\n{setting}")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    if args.json:
        out = {"title": f"DenseNet-121 training and predict throughput ({args.devices})",
               "rows": [{k: (None if math.isnan(v) else round(v, 3)) if isinstance(v, float) else v for k, v in r.items()}
                        for r in df.to_dict("records")],
               "notes": [setting,
                         (f"{col}: against the {first} fp32 row of the same kind (pipeline rows "
                          "on CUDA run bf16 autocast and have no fp32 row)"),
                         ("of model-only: a pipeline row against the step row of the same device "
                          "and precision")]}
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
