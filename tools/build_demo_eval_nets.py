#!/usr/bin/env python
"""Build the stand-in scoring nets of `rv2 eval-generator` for the demo world (seeded).

    .venv/bin/python tools/build_demo_eval_nets.py [--out python/rv2/demo/weights/eval] [--threads 2]

Writes an eval bundle (rv2.evaluate.feature_nets, `eval_bundle.json`) with three
small `SmallCNN`s that stand in for the real networks on phantom radiographs:

  disease    trained: multi-label classifier of the paper's five alignment labels
             (Atelectasis, Cardiomegaly, Edema, Pleural Effusion, Pneumothorax) on
             phantoms and their reconstructions through the bundled generator's VAE
             (generations come out of that decoder); stands in for the
             torchxrayvision DenseNet (AUROC, and its pooled features for FID-xrv)
  inception  deterministic: random seeded conv net, BatchNorm statistics set on
             phantoms; 128-d pooled features stand in for Inception-v3's 2048
  biovil     deterministic: another random seeded conv net with a 32-d linear
             projection head (the embedding), BatchNorm statistics set likewise and
             the head's bias set so that phantom embeddings have mean zero (else a
             shared mean direction makes every cosine close to 1)

Phantoms come from the generator's world seed (1000) but from subject ranges that
neither its training nor `rv2.demo.eval_data`'s validation set use.
Writes `<out>/record.json` (configs, seconds, held-out AUROC per label).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))

LABELS = ("Atelectasis", "Cardiomegaly", "Edema", "Pleural Effusion", "Pneumothorax")
SEED = 4321
TRAIN_FIRST, HOLD_FIRST = 6 * 10**6, 7 * 10**6
N_TRAIN, N_HOLD = 2400, 400
SIZE = 64
SPEC = {
    "disease": {"arch": "SmallCNN", "kwargs": {"in_ch": 1, "width": 16, "n_out": len(LABELS),
                                               "depth": 3},
                "input_size": SIZE, "labels": list(LABELS), "embedding": "pool"},
    "inception": {"arch": "SmallCNN", "kwargs": {"in_ch": 1, "width": 16, "n_out": 1, "depth": 4},
                  "input_size": SIZE, "embedding": "pool"},
    "biovil": {"arch": "SmallCNN", "kwargs": {"in_ch": 1, "width": 16, "n_out": 32, "depth": 3},
               "input_size": SIZE, "embedding": "head"},
}


def phantoms(n: int, first: int):
    import numpy as np
    import torch
    from rv2.demo.eval_data import WORLD_SEED, phantom_cases
    from rv2.demo.radiology_reports import labels
    from rv2.demo.world import render

    cases = phantom_cases(n, first)
    x = torch.from_numpy(np.stack([render(c, SIZE, seed=WORLD_SEED) for c, _ in cases]))
    y = torch.tensor([[labels(c)[lab] for lab in LABELS] for c, _ in cases], dtype=torch.float32)
    return x.float().div(255).unsqueeze(1), y


def reconstruct(x, vae_dir: Path):
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    with torch.no_grad():
        return torch.cat([((vae.decode(vae.encode(x[i:i + 64].expand(-1, 3, -1, -1) * 2 - 1)
                                       .latent_dist.mean).sample.mean(1, keepdim=True) + 1) / 2)
                          .clamp(0, 1) for i in range(0, len(x), 64)])


def set_bn_stats(net, x):
    """BatchNorm running statistics of a random net from phantoms (cumulative average)."""
    import torch

    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        for i in range(0, len(x), 128):
            net.features(x[i:i + 128] * 2 - 1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.1
    return net.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "python/rv2/demo/weights/eval"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=600)
    args = ap.parse_args()

    import numpy as np
    import torch
    import torch.nn.functional as F
    from rv2.evaluate.feature_nets import save_eval_bundle
    from rv2.evaluate.metrics import auroc
    from rv2.models.qc_networks import build_net

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    vae_dir = REPO / "python/rv2/demo/weights/generator/vae"
    x_tr, y_tr = phantoms(N_TRAIN, TRAIN_FIRST)
    x_ho, y_ho = phantoms(N_HOLD, HOLD_FIRST)
    x_tr = torch.cat([x_tr, reconstruct(x_tr, vae_dir)])
    y_tr = torch.cat([y_tr, y_tr])
    x_ho_rec = reconstruct(x_ho, vae_dir)
    t_data = time.perf_counter() - t0

    # disease: masked BCE (uncertain -1 left out, not mentioned = negative)
    torch.manual_seed(SEED)
    net = build_net("SmallCNN", **SPEC["disease"]["kwargs"])
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=args.steps)
    target = torch.nan_to_num(y_tr, nan=0.0)
    mask = (target >= 0).float()
    g = torch.Generator().manual_seed(SEED)
    net.train()
    for step in range(args.steps):
        idx = torch.randint(0, len(x_tr), (64,), generator=g)
        logits = net(x_tr[idx] * 2 - 1)
        loss = (F.binary_cross_entropy_with_logits(logits, target[idx].clamp(min=0), reduction="none")
                * mask[idx]).sum() / mask[idx].sum().clamp(min=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    t_train = time.perf_counter() - t0 - t_data

    def held_out(x):
        with torch.no_grad():
            p = torch.sigmoid(net(x * 2 - 1)).numpy()
        return {lab: round(auroc(np.nan_to_num(y_ho[:, j].numpy(), nan=0.0), p[:, j]), 4)
                for j, lab in enumerate(LABELS)}

    torch.manual_seed(SEED + 1)
    inception = set_bn_stats(build_net("SmallCNN", **SPEC["inception"]["kwargs"]), x_tr)
    torch.manual_seed(SEED + 2)
    biovil = set_bn_stats(build_net("SmallCNN", **SPEC["biovil"]["kwargs"]), x_tr)
    with torch.no_grad():
        mean_pool = torch.cat([biovil.features(x_tr[i:i + 128] * 2 - 1).mean(dim=(2, 3))
                               for i in range(0, len(x_tr), 128)]).mean(0)
        biovil.head.bias.copy_(-biovil.head.weight @ mean_pool)
    notes = {"disease": "trained on phantoms + VAE reconstructions (tools/build_demo_eval_nets.py)",
             "inception": "random (seeded) conv net, BatchNorm statistics from phantoms",
             "biovil": "random (seeded) conv net + 32-d projection, BatchNorm statistics and "
                       "embedding mean (head bias) from phantoms"}
    spec = {k: {**v, "note": notes[k]} for k, v in SPEC.items()}
    out = save_eval_bundle(args.out, {"disease": net, "inception": inception, "biovil": biovil}, spec)
    record = {"seed": SEED, "image_size": SIZE, "n_train": N_TRAIN, "n_holdout": N_HOLD,
              "train_subjects_from": TRAIN_FIRST, "holdout_subjects_from": HOLD_FIRST,
              "steps": args.steps, "threads": args.threads,
              "seconds": {"data": round(t_data, 1), "train": round(t_train, 1),
                          "total": round(time.perf_counter() - t0, 1)},
              "holdout_auroc": {"phantoms": held_out(x_ho), "vae_reconstructions": held_out(x_ho_rec)},
              "positives_holdout": {lab: int((y_ho[:, j] == 1).sum()) for j, lab in enumerate(LABELS)},
              "bytes": {p.name: p.stat().st_size for p in sorted(out.glob("*.safetensors"))},
              "machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "platform": platform.platform()}}
    (out / "record.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
