#!/usr/bin/env python
"""Train the tiny models bundled with `rv2 demo` on the phantom world (seeded).

    .venv/bin/python tools/train_demo_models.py [--out python/rv2/demo/weights]
        [--stages data,vae,qc,generator,eval] [--threads 1] [--set key=value ...]

Stages (each skips its work when its output exists, unless --force):
  data       render phantoms of the world (a world seed the demo never uses) and
             their prompts `<AGE> year old <RACE> <SEX>. <IMPRESSION>` (rv2.prompts' template)
  vae        a small AutoencoderKL (64 px -> 16x16x4), latents rescaled so that
             latents x 0.18215 have unit variance, as for SD
  qc         stand-in QC nets (SmallCNN) with the real models' interfaces
             (rv2.models.qc_networks: sex P(female), race over Asian/Black/White, age in years),
             trained on phantoms and their VAE reconstructions; saved as a QC bundle
  generator  UNet2DConditionModel + CLIP text encoder (real tokenizer) trained with
             rv2.finetune.train.train_generator on the cached latents
  eval       generations for held-out prompts, judged by the QC bundle (pass rate
             per attribute against chance) and by the marker reader

Writes `<out>/generator/` (diffusers pipeline), `<out>/qc/` (QC bundle) and
`<out>/record.json` (configs, wall time per stage, metrics, machine).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))

from rv2.config import Config, write_artifact_meta
from rv2.files import atomic_write_text

STAGES = ("data", "vae", "qc", "generator", "eval")


@dataclasses.dataclass
class VAESection:
    channels: list[int] = dataclasses.field(default_factory=lambda: [16, 32, 32])
    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    kl_weight: float = 1e-6


@dataclasses.dataclass
class QCSection:
    width: int = 8
    depth: int = 3
    steps: int = 300
    age_steps: int = 900          # age regression needs longer than the two classifiers
    batch_size: int = 64
    lr: float = 3e-3
    input_size: int = 64
    n_reconstructed: int = 1500   # training images also seen through the VAE


@dataclasses.dataclass
class GeneratorSection:
    unet_channels: list[int] = dataclasses.field(default_factory=lambda: [32, 64, 64])
    text_hidden: int = 32
    text_layers: int = 2
    text_heads: int = 4
    steps: int = 1200
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 50
    informed_token_init: bool = True
    prompt_dropout: float = 0.1   # empty-prompt training, for classifier-free guidance


@dataclasses.dataclass
class EvalSection:
    n_prompts: int = 96
    steps: int = 25
    guidance: float = 3.0         # the authors' demo configuration
    age_tolerance: float = 16.0


@dataclasses.dataclass
class DemoTrainConfig(Config):
    VERSION = 1
    seed: int = 1234
    world_seed: int = 1000       # the demo's own worlds use other seeds
    image_size: int = 64
    n_train: int = 4000          # phantoms for VAE / generator / QC training
    n_holdout: int = 600         # phantoms for QC accuracy
    vae: VAESection = dataclasses.field(default_factory=VAESection)
    qc: QCSection = dataclasses.field(default_factory=QCSection)
    generator: GeneratorSection = dataclasses.field(default_factory=GeneratorSection)
    eval: EvalSection = dataclasses.field(default_factory=EvalSection)


# ------------------------------------------------------------------ helpers

def _log(msg: str) -> None:
    print(f"[train_demo_models {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _phantoms(cfg: DemoTrainConfig, n: int, start: int, site: str, pa_only=True):
    """n (case, prompt) pairs of one site, subject indices from `start`."""
    from rv2.demo.radiology_reports import impression
    from rv2.demo.world import sample_case
    from rv2.prompts.template import PromptTemplate

    tpl = PromptTemplate()
    out, i = [], start
    while len(out) < n:
        c = sample_case(cfg.world_seed, site, i)
        i += 1
        if c.group is None or (pa_only and c.view != "PA") or c.nondescriptive:
            continue
        out.append((c, tpl.render(impression(c), c.age, c.group, c.sex)))
    return out


def stage_data(cfg, work: Path) -> dict:
    import pandas as pd
    from PIL import Image
    from rv2.demo.world import render
    from tqdm import tqdm

    img_dir = work / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    sets = [("train", _phantoms(cfg, cfg.n_train, 0, "mimic")),
            ("holdout", _phantoms(cfg, cfg.n_holdout // 2, 10**6, "mimic")
             + _phantoms(cfg, cfg.n_holdout // 2, 10**6, "chexpert")),
            ("qc_extra", _phantoms(cfg, cfg.n_train // 4, 2 * 10**6, "chexpert", pa_only=False))]
    for part, items in sets:
        for c, prompt in tqdm(items, desc=f"data: {part}", unit="img"):
            rel = f"images/{c.case_id}.png"
            Image.fromarray(render(c, cfg.image_size, seed=cfg.world_seed)).save(work / rel)
            rows.append({"image_id": c.case_id, "path": rel, "prompt": prompt,
                         "prompt_id": c.case_id, "sex": c.sex, "race": c.group, "age": c.age,
                         "site": c.site, "part": part})
    df = pd.DataFrame(rows)
    df.to_parquet(work / "phantoms.parquet")
    df[df.part == "train"].to_parquet(work / "train_prompts.parquet")
    return {"images": len(df), "by_part": df.part.value_counts().to_dict(),
            "example_prompts": df.prompt.head(3).tolist(),
            "race_mix_train": {k: int(v) for k, v in
                               df[df.part == "train"].race.value_counts().items()}}


def _load_images(work: Path, df):
    import numpy as np
    import torch
    from PIL import Image

    arr = np.stack([np.asarray(Image.open(work / p), dtype=np.uint8) for p in df.path])
    return torch.from_numpy(arr).float().div(255).unsqueeze(1)  # N x 1 x H x W in [0, 1]


def build_vae(cfg):
    from diffusers import AutoencoderKL

    ch = tuple(cfg.vae.channels)
    n = len(ch)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=ch,
                         layers_per_block=1, norm_num_groups=8, sample_size=cfg.image_size)


def stage_vae(cfg, work: Path, out: Path) -> dict:
    import math

    import pandas as pd
    import torch
    import torch.nn.functional as F
    from rv2.models.sd import VAE_SCALING
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    df = pd.read_parquet(work / "phantoms.parquet")
    train = _load_images(work, df[df.part != "holdout"])
    hold = _load_images(work, df[df.part == "holdout"])
    vae = build_vae(cfg).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg.seed)
    bar = tqdm(range(cfg.vae.steps), desc="vae", unit="step")
    for step in bar:
        idx = torch.randint(0, len(train), (cfg.vae.batch_size,), generator=g)
        x = train[idx].expand(-1, 3, -1, -1) * 2 - 1
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=g)).sample
        loss = F.mse_loss(rec, x) + cfg.vae.kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    vae.eval()
    with torch.no_grad():
        x = hold.expand(-1, 3, -1, -1) * 2 - 1
        mean = torch.cat([vae.encode(x[i:i + 64]).latent_dist.mean for i in range(0, len(x), 64)])
        sigma = float(mean.std())
        # Rescale the latent space so that latents * VAE_SCALING have unit variance (as SD's).
        k = (1.0 / VAE_SCALING) / sigma
        c = vae.config.latent_channels
        vae.quant_conv.weight[:c] *= k
        vae.quant_conv.bias[:c] *= k
        vae.quant_conv.bias[c:] += 2 * math.log(k)
        vae.post_quant_conv.weight /= k
        mean = torch.cat([vae.encode(x[i:i + 64]).latent_dist.mean for i in range(0, len(x), 64)])
        rec = torch.cat([vae.decode(mean[i:i + 64]).sample for i in range(0, len(x), 64)])
        mse = float(F.mse_loss(rec, x))
    vae.save_pretrained(work / "vae")
    agree = _marker_agreement(((rec[:, :1] + 1) / 2).clamp(0, 1), hold)
    return {"latent_std_before_rescale": sigma, "latent_std_scaled": float(mean.std() * VAE_SCALING),
            "holdout_mse_[-1,1]": mse, "holdout_psnr_db": float(10 * math.log10(4 / mse)),
            "marker_agreement_reconstruction_vs_original": agree,
            "params": sum(p.numel() for p in vae.parameters())}


def _marker_agreement(images, reference) -> dict:
    """How often the marker reader reads the same sex/group/age(+-5y) from two image sets."""

    from rv2.demo.world import read_markers

    s = g = a = 0
    n = len(images)
    for i in range(n):
        m1 = read_markers(images[i, 0].numpy())
        m2 = read_markers(reference[i, 0].numpy())
        s += m1["sex"] == m2["sex"]
        g += m1["group"] == m2["group"]
        a += abs(m1["age"] - m2["age"]) <= 5
    return {"sex": s / n, "group": g / n, "age_within_5y": a / n, "n": n}


def stage_qc(cfg, work: Path, out: Path) -> dict:
    import numpy as np
    import pandas as pd
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL
    from rv2.models import qc_networks as Q
    from tqdm import tqdm

    torch.manual_seed(cfg.seed + 1)
    q = cfg.qc
    df = pd.read_parquet(work / "phantoms.parquet")
    tr = df[df.part != "holdout"].reset_index(drop=True)
    ho = df[df.part == "holdout"].reset_index(drop=True)
    x_tr, x_ho = _load_images(work, tr), _load_images(work, ho)
    # Also learn from VAE reconstructions (generations come out of the same decoder); a
    # subset is enough, and decoding all of them would dominate this stage's time.
    vae = AutoencoderKL.from_pretrained(work / "vae").eval()
    n_rec = min(len(x_tr), q.n_reconstructed)
    rec_idx = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(cfg.seed))[:n_rec]
    with torch.no_grad():
        recs = []
        for i in range(0, n_rec, 128):
            x = x_tr[rec_idx[i:i + 128]].expand(-1, 3, -1, -1) * 2 - 1
            recs.append(((vae.decode(vae.encode(x).latent_dist.mean).sample[:, :1] + 1) / 2).clamp(0, 1))
        x_rec = x_tr.clone()
        x_rec[rec_idx] = torch.cat(recs)
    sex = torch.tensor((tr.sex == "F").to_numpy(), dtype=torch.long)
    race_idx = tr.race.map({r: i for i, r in enumerate(Q.RACE_CLASSES)})
    race = torch.tensor(race_idx.fillna(-1).to_numpy(), dtype=torch.long)  # -1: Hispanic, not trained
    age = torch.tensor(tr.age.to_numpy(), dtype=torch.float32)
    spec = {k: {"arch": "SmallCNN", "kwargs": {"in_ch": 3, "width": q.width, "n_out": Q.N_OUT[k],
                                               "depth": q.depth}, "input_size": q.input_size}
            for k in ("sex", "race", "age")}
    spec.update(convention="authors", pre_size=None)
    nets = {k: Q.SmallCNN(3, q.width, Q.N_OUT[k], q.depth) for k in ("sex", "race", "age")}
    with torch.no_grad():
        nets["age"].head.bias.fill_(float(age.mean()))
    wrappers = {k: Q.WRAPPERS[k](nets[k], "authors", q.input_size, None) for k in nets}
    g = torch.Generator().manual_seed(cfg.seed + 1)

    def augment(x):
        b = x.shape[0]
        x = x * (1 + 0.1 * torch.randn(b, 1, 1, 1, generator=g)) + 0.05 * torch.randn(b, 1, 1, 1, generator=g)
        x = x + torch.rand(b, 1, 1, 1, generator=g) * 0.06 * torch.randn(x.shape, generator=g)
        return x.clamp(0, 1)

    metrics = {}
    for kind in ("sex", "race", "age"):
        w = wrappers[kind]
        w.net.train()
        opt = torch.optim.AdamW(w.net.parameters(), lr=q.lr, weight_decay=1e-4)
        steps = q.age_steps if kind == "age" else q.steps
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=q.lr, total_steps=steps)
        pool = torch.arange(len(tr)) if kind != "race" else torch.nonzero(race >= 0)[:, 0]
        bar = tqdm(range(steps), desc=f"qc: {kind}", unit="step")
        for _ in bar:
            idx = pool[torch.randint(0, len(pool), (q.batch_size,), generator=g)]
            use_rec = torch.rand(len(idx), 1, 1, 1, generator=g) < 0.5
            x = augment(torch.where(use_rec, x_rec[idx], x_tr[idx]))
            outp = w.net(w.preprocess(x))
            if kind == "sex":
                loss = F.cross_entropy(outp, sex[idx])
            elif kind == "race":
                loss = F.cross_entropy(outp, race[idx])
            else:
                loss = F.smooth_l1_loss(outp[:, 0], age[idx], beta=2.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        w.net.eval()
    Q.save_qc_bundle(out / "qc", nets["sex"], nets["race"], nets["age"], spec)
    qcm = Q.load_qc_models(out / "qc")
    pred = qcm.predict(x_ho)
    sex_ok = (pred["p_female"] >= 0.5) == (ho.sex == "F").to_numpy()
    judged = ho.race.isin(Q.RACE_CLASSES).to_numpy()
    race_pred = np.array(Q.RACE_CLASSES)[pred["race_probs"].argmax(1)]
    err = pred["age"] - ho.age.to_numpy()
    for site in ("mimic", "chexpert"):
        m = (ho.site == site).to_numpy()
        metrics[site] = {
            "n": int(m.sum()), "sex_accuracy": float(sex_ok[m].mean()),
            "race_accuracy_3class": float((race_pred == ho.race.to_numpy())[m & judged].mean()),
            "age_mae_years": float(np.abs(err[m]).mean()), "age_sd_years": float(err[m].std()),
            "age_within_16y": float((np.abs(err[m]) <= 16).mean())}
    write_artifact_meta(out / "qc", cfg, extra={"holdout_metrics": metrics})
    return {"holdout": metrics}


def build_generator_components(cfg, vae_dir: Path):
    """UNet + CLIP text encoder (real tokenizer) around the trained VAE."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from rv2.models.sd import SDComponents, pndm_scheduler
    from rv2.prompts.tokenizer import clip_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel

    g = cfg.generator
    torch.manual_seed(cfg.seed + 2)
    n_vae = len(cfg.vae.channels)
    latent = cfg.image_size // 2 ** (n_vae - 1)
    ch = tuple(g.unet_channels)
    n = len(ch)
    unet = UNet2DConditionModel(
        sample_size=latent, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=ch,
        # cross-attention at the coarse levels only: cheap on a CPU, enough for corner markers
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=g.text_hidden, attention_head_dim=8, norm_num_groups=16)
    tok = clip_tokenizer()
    te = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=g.text_hidden, intermediate_size=2 * g.text_hidden,
        num_hidden_layers=g.text_layers, num_attention_heads=g.text_heads,
        max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id))
    if g.informed_token_init:
        _informed_token_init(te, tok)
    vae = AutoencoderKL.from_pretrained(vae_dir)
    return SDComponents(unet, vae.eval(), te, tok, pndm_scheduler())


def _informed_token_init(text_encoder, tok) -> None:
    """Give the demographic words and the digits of the age distinct, structured
    embeddings (race one-hot, sex sign, digit value), so a tiny encoder learns the
    prompt's demographics in minutes. Every other token keeps its random init."""
    import torch

    emb = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        def put(token: str, dims: dict[int, float]):
            i = tok.convert_tokens_to_ids(token)
            for d, v in dims.items():
                emb[i, d] = v
        for j, word in enumerate(("asian", "black", "hispanic", "white")):
            put(f"{word}</w>", {j: 1.5})
        put("male</w>", {4: 1.5})
        put("female</w>", {4: -1.5})
        for d in range(10):
            put(str(d), {5: (d - 5) / 3.0, 6: 1.0})          # tens digit of the age
            put(f"{d}</w>", {7: (d - 4.5) / 4.5, 8: 1.0})    # units digit


def stage_generator(cfg, work: Path, out: Path, threads: int) -> dict:
    from rv2.finetune.config import TrainGeneratorConfig
    from rv2.finetune.train import train_generator

    g = cfg.generator
    comps = build_generator_components(cfg, work / "vae")
    tcfg = TrainGeneratorConfig.from_dict({
        "output_dir": str(work / "generator_run"), "seed": cfg.seed,
        "data": {"source": "prompts", "prompts_table": str(work / "train_prompts.parquet"),
                 "data_root": str(work), "resolution": cfg.image_size, "latent_cache": True,
                 "num_workers": 0},
        "model": {"mixed_precision": "no", "train_text_encoder": True,
                  "prompt_dropout": g.prompt_dropout},
        "optim": {"lr": g.lr, "weight_decay": 1e-2, "schedule": "constant_with_warmup",
                  "warmup_steps": g.warmup_steps, "batch_size": g.batch_size,
                  "max_steps": g.steps, "max_grad_norm": 1.0},
        "checkpoint": {"every": 0, "keep_last": 1, "resume": "none"},
        "validation": {"every": 0},
        "logging": {"every": 25, "tensorboard": False, "progress": True},
    })
    pipe = train_generator(tcfg, components=comps)
    dest = out / "generator"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(pipe, dest)
    summary = json.loads((dest / "training_summary.json").read_text())
    return {"train_generator_summary": summary,
            "unet_params": sum(p.numel() for p in comps.unet.parameters()),
            "text_encoder_params": sum(p.numel() for p in comps.text_encoder.parameters())}


def stage_eval(cfg, work: Path, out: Path) -> dict:
    """Generate for held-out prompts (balanced demographics) and judge with the QC bundle."""
    import numpy as np
    import pandas as pd
    import torch
    from rv2.demo.world import read_markers
    from rv2.generate import sampler as S
    from rv2.generate.eager import eager_stages
    from rv2.generate.qc_rules import judge
    from rv2.models.qc_networks import RACE_CLASSES, load_qc_models
    from rv2.models.sd import load_components

    e = cfg.eval
    comps = load_components(out / "generator", torch_dtype=torch.float32)
    qcm = load_qc_models(out / "qc")
    items = _phantoms(cfg, e.n_prompts * 3, 3 * 10**6, "mimic")
    # balance: cycle through the 8 sex x group cells
    cells: dict = {}
    for c, p in items:
        cells.setdefault((c.sex, c.group), []).append((c, p))
    chosen, k = [], 0
    keys = sorted(cells)
    while len(chosen) < e.n_prompts and any(cells.values()):
        key = keys[k % len(keys)]
        if cells[key]:
            chosen.append(cells[key].pop(0))
        k += 1
    prompts = [p for _, p in chosen]
    sex = [c.sex for c, _ in chosen]
    race = [c.group for c, _ in chosen]
    age = [float(c.age) for c, _ in chosen]
    st = eager_stages(comps)
    shape = S.latent_shape(st.denoiser, st.decoder)
    imgs = []
    for i in range(0, len(prompts), 32):
        cond = st.text_encoder.encode(prompts[i:i + 32])
        uncond = st.text_encoder.encode([""]) if e.guidance > 1 else None
        lat = S.initial_latents([cfg.seed * 1000 + j for j in range(i, i + len(cond))], shape)
        lat = S.denoise(st.denoiser, st.scheduler, cond, uncond, lat, steps=e.steps,
                        guidance=e.guidance)
        imgs.append(S.to_gray(st.decoder.decode(lat)))
    images = torch.cat(imgs)
    pred = qcm.predict(images)
    rec = judge(pred["p_female"], pred["race_probs"], pred["age"], sex, race, age, e.age_tolerance)
    df = pd.DataFrame(rec)
    rng = np.random.default_rng(0)
    # chance: the same predictions judged against shuffled requests
    perm = rng.permutation(len(age))
    chance = pd.DataFrame(judge(pred["p_female"], pred["race_probs"], pred["age"],
                                [sex[j] for j in perm], [race[j] for j in perm],
                                [age[j] for j in perm], e.age_tolerance))
    judged = df.qc_race_checked
    marks = [read_markers(images[i, 0].numpy()) for i in range(len(images))]
    from PIL import Image

    grid = (images[:32, 0].numpy() * 255).round().astype(np.uint8)
    rows = [np.concatenate(list(grid[r * 8:(r + 1) * 8]), axis=1) for r in range(len(grid) // 8)]
    if rows:
        Image.fromarray(np.concatenate(rows, axis=0)).save(out / "generator_samples.png")
    return {
        "n_prompts": len(prompts), "sampler_steps": e.steps, "guidance": e.guidance,
        "qc_pass_rate": {"sex": float(df.qc_sex_ok.mean()),
                         "race": float(df.qc_race_ok[judged].astype(bool).mean()),
                         "age": float(df.qc_age_ok.mean()), "all": float(df.qc_pass.mean())},
        "chance_pass_rate_shuffled_requests": {
            "sex": float(chance.qc_sex_ok.mean()),
            "race": float(chance.qc_race_ok[chance.qc_race_checked].astype(bool).mean()),
            "age": float(chance.qc_age_ok.mean()), "all": float(chance.qc_pass.mean())},
        "age_mae_years": {
            "qc_model": float(np.mean(np.abs(pred["age"] - np.asarray(age)))),
            "qc_model_shuffled_requests": float(np.mean(np.abs(pred["age"] - np.asarray(age)[perm]))),
            "marker_reader": float(np.mean([abs(m["age"] - a) for m, a in zip(marks, age)]))},
        "marker_reader_agreement": {
            "sex": float(np.mean([m["sex"] == s for m, s in zip(marks, sex)])),
            "group": float(np.mean([m["group"] == r for m, r in zip(marks, race)])),
            "age_within_16y": float(np.mean([abs(m["age"] - a) <= 16 for m, a in zip(marks, age)]))},
        "race_classes_checked": list(RACE_CLASSES),
        "samples_png": "generator_samples.png",
    }


def _relative_paths(out: Path) -> None:
    """Paths in the bundled configs and metadata are written relative to the repository."""
    for p in list(out.rglob("*.json")) + list(out.rglob("*.yaml")):
        text = p.read_text()
        fixed = text.replace(str(REPO) + "/", "").replace(str(REPO), ".")
        if fixed != text:
            atomic_write_text(p, fixed)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "python" / "rv2" / "demo" / "weights"))
    ap.add_argument("--work", default=str(REPO / "build" / "demo-train"))
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--force", action="store_true", help="redo stages whose output exists")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = DemoTrainConfig().override(args.overrides)
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    record_path = out / "record.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    record.update({"what": "rv2 demo bundled models, trained on the phantom world by "
                           "tools/train_demo_models.py",
                   "config": cfg.to_dict(),
                   "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                               "platform": platform.platform(), "torch": torch.__version__,
                               "python": platform.python_version()}})
    record.setdefault("stages", {})
    todo = [s for s in args.stages.split(",") if s]
    bad = [s for s in todo if s not in STAGES]
    if bad:
        ap.error(f"unknown stage(s) {bad}; known: {STAGES}")
    done_marker = {"data": work / "phantoms.parquet", "vae": work / "vae",
                   "qc": out / "qc" / "qc_bundle.json", "generator": out / "generator" / "model_index.json",
                   "eval": None}
    for stage in STAGES:
        if stage not in todo:
            continue
        marker = done_marker[stage]
        if marker is not None and marker.exists() and not args.force:
            _log(f"{stage}: exists ({marker}), skipped (use --force to redo)")
            continue
        _log(f"{stage}: start")
        t0 = time.perf_counter()
        load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        if stage == "data":
            metrics = stage_data(cfg, work)
        elif stage == "vae":
            metrics = stage_vae(cfg, work, out)
        elif stage == "qc":
            metrics = stage_qc(cfg, work, out)
        elif stage == "generator":
            metrics = stage_generator(cfg, work, out, args.threads)
        else:
            metrics = stage_eval(cfg, work, out)
        wall = time.perf_counter() - t0
        record["stages"][stage] = {"wall_s": round(wall, 1), "load_avg_1min_at_start": load0,
                                   "torch_threads": torch.get_num_threads(),
                                   "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                   "metrics": metrics}
        atomic_write_text(record_path, json.dumps(record, indent=2, default=str))
        _log(f"{stage}: done in {wall:.0f}s: {json.dumps(metrics, default=str)[:600]}")
    _relative_paths(out)
    record["total_wall_s"] = round(sum(s["wall_s"] for s in record["stages"].values()), 1)
    sizes = {str(p.relative_to(out)): p.stat().st_size for p in out.rglob("*") if p.is_file()}
    record["bundle_bytes"] = sum(sizes.values())
    atomic_write_text(record_path, json.dumps(record, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
