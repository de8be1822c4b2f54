"""Fine-tune Stable Diffusion on radiograph/prompt pairs (RoentGen-v2 training), with accelerate.

UNet and CLIP text encoder are trained jointly on the epsilon (or v) objective;
the VAE is frozen. One process or many (`accelerate launch`, see
docs/train-generator.md); the same code runs on a CPU with tiny components.

Exact resume. Every random draw of training belongs to one *sample number* p
(the p-th sample of the run): its data item (`train_data.StreamSampler`), its
timestep, its noise and its latent draw come from a generator seeded by
(seed, p). A checkpoint stores weights, optimizer, LR schedule, EMA, the global
RNG states and the number of samples consumed; a resumed run starts the stream
there. So an interrupted and resumed run follows the uninterrupted run's loss
trajectory step for step, and W processes with batch B follow one process with
batch W x B (up to float summation order).

Layout of `output_dir`:
    checkpoints/step-00000500/  accelerate state (keep-last-K)
    logs/train_log.csv, logs/tensorboard/
    samples/step-00000500/NN.png  validation images for fixed prompts
    latent_cache/  VAE moments when data.latent_cache is on
    pipeline/  the diffusers StableDiffusionPipeline folder, with config.yaml,
               training_summary.json and rv2_meta.json
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from rv2.config import ConfigError, write_artifact_meta
from rv2.data.imageio import save_png
from rv2.files import atomic_write_text
from rv2.finetune import data as td
from rv2.finetune.config import TrainGeneratorConfig
from rv2.models import sd

log = logging.getLogger(__name__)

CSV_FIELDS = ["step", "loss", "lr", "grad_norm", "samples_per_s", "epoch", "samples"]


def sample_seed(seed: int, position: int) -> int:
    """Seed of the generator that draws sample number `position`'s timestep and noise."""
    return (seed * 1_000_000_007 + position + 1) % (2 ** 63)


class TrainState:
    """Counters saved with each checkpoint (registered with accelerate)."""

    def __init__(self, items: int = 0, seed: int = 0):
        self.step = 0  # optimizer steps done
        self.samples = 0  # global samples consumed = next sample number
        self.items, self.seed = items, seed  # what the data order depends on

    def state_dict(self):
        return {"step": self.step, "samples": self.samples, "items": self.items, "seed": self.seed}

    def load_state_dict(self, d):
        self.step, self.samples = int(d["step"]), int(d["samples"])
        if (d.get("items", self.items), d.get("seed", self.seed)) != (self.items, self.seed):
            log.warning("resuming with a different dataset size or seed (checkpoint: %s items, "
                        "seed %s; now: %s items, seed %s): the data order will not continue "
                        "the interrupted run's", d.get("items"), d.get("seed"), self.items, self.seed)


def _denoiser_cls():
    import torch

    class Denoiser(torch.nn.Module):
        """UNet + text encoder as one module, so DDP syncs both in one pass."""

        def __init__(self, unet, text_encoder, train_text_encoder: bool):
            super().__init__()
            self.unet, self.text_encoder = unet, text_encoder
            self.train_text_encoder = train_text_encoder

        def forward(self, noisy, timesteps, input_ids):
            with torch.set_grad_enabled(self.train_text_encoder and torch.is_grad_enabled()):
                enc = self.text_encoder(input_ids)[0]  # last hidden state, as the reference
            return self.unet(noisy, timesteps, enc).sample

    return Denoiser


def find_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under root, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")
             and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def _resolve_resume(cfg: TrainGeneratorConfig, ckpt_root: Path) -> Path | None:
    r = (cfg.checkpoint.resume or "none").strip()
    if r.lower() == "none":
        return None
    if r.lower() == "auto":
        found = find_checkpoints(ckpt_root)
        return found[-1] if found else None
    p = Path(r).expanduser()
    if not p.is_dir():
        raise ConfigError(f"checkpoint.resume={r!r}: no such checkpoint folder (use 'auto', "
                          f"'none', or one of {ckpt_root}/step-*)")
    return p


def _build_components(cfg, components):
    if components is not None:
        return components, "<in-memory components>"
    if not cfg.model.base:
        raise ConfigError("model.base is not set: give a local diffusers folder (Stable Diffusion "
                          "2.1 base, or RoentGen-v2 to continue training), e.g. "
                          "--set model.base=/models/stable-diffusion-2-1-base")
    return sd.load_components(cfg.model.base), str(cfg.model.base)


def _fingerprint_module(module) -> str:
    """A cheap identity of a module's weights (shapes and sums), for cache keys."""
    import hashlib

    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for k, v in module.state_dict().items():
            h.update(f"{k}:{tuple(v.shape)}:{float(v.double().sum()):.10e}:"
                     f"{float(v.double().abs().sum()):.10e}".encode())
    return h.hexdigest()[:16]


def build_latent_cache(accelerator, dataset, vae, cache_dir: Path, batch: int, vae_dtype):
    """Encode every image once into VAE moments [N, 2C, h, w] (float32 .npy memmap).

    Each process encodes every W-th image into the shared file (one node, or a
    shared filesystem across nodes); the cache is keyed by the items, the
    resolution and the VAE weights, and reused when complete.
    """
    import hashlib

    import numpy as np
    import torch
    from tqdm.auto import tqdm

    key = hashlib.sha256("\n".join(dataset.keys()).encode()
                         + f"|{dataset.resolution}|{_fingerprint_module(vae)}".encode()).hexdigest()[:16]
    npy, done = cache_dir / f"latents-{key}.npy", cache_dir / f"latents-{key}.json"
    if done.is_file():
        return np.load(npy, mmap_mode="r")
    n = len(dataset)
    dev = accelerator.device
    with torch.no_grad():
        probe = vae.encode(dataset[0]["pixels"][None].to(dev, vae_dtype)).latent_dist.parameters
    shape = (n, *probe.shape[1:])
    if accelerator.is_main_process:
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.lib.format.open_memmap(npy, mode="w+", dtype=np.float32, shape=shape).flush()
    accelerator.wait_for_everyone()
    mm = np.load(npy, mmap_mode="r+")
    mine = list(range(accelerator.process_index, n, accelerator.num_processes))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, mine), batch_size=batch,
                                         num_workers=0)
    bar = tqdm(total=len(mine), desc="latent cache", disable=not accelerator.is_local_main_process)
    with torch.no_grad():
        for b in loader:
            moments = vae.encode(b["pixels"].to(dev, vae_dtype)).latent_dist.parameters
            mm[b["index"].numpy()] = moments.float().cpu().numpy()
            bar.update(len(b["index"]))
    bar.close()
    mm.flush()
    del mm
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_text(done, json.dumps({"items": n, "shape": list(shape),
                                            "resolution": dataset.resolution}))
    accelerator.wait_for_everyone()
    return np.load(npy, mmap_mode="r")


class _ScalarLog:
    """CSV (append, truncated past the resume step) and optional TensorBoard scalars."""

    def __init__(self, log_dir: Path, resume_step: int, tensorboard: bool):
        log_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = log_dir / "train_log.csv"
        rows = []
        if resume_step > 0 and self.csv_path.is_file():
            with open(self.csv_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with open(self.csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            w.writeheader()
            w.writerows(rows)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(log_dir / "tensorboard"),
                                        purge_step=resume_step + 1 if resume_step else None)
            except ImportError as exc:  # tensorboard is an optional extra
                log.warning("TensorBoard logging off: %s (pip install tensorboard)", exc)

    def write(self, row: dict) -> None:
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=CSV_FIELDS).writerow(row)
        if self.tb is not None:
            for k in ("loss", "lr", "grad_norm", "samples_per_s", "epoch"):
                if row.get(k) is not None and row[k] != "":
                    self.tb.add_scalar(f"train/{k}", float(row[k]), int(row["step"]))

    def image(self, tag: str, img01, step: int) -> None:
        if self.tb is not None:
            self.tb.add_image(tag, img01, step, dataformats="HW")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _sample_validation(cfg, model, vae, tokenizer, scheduler, step: int, out: Path, scalars,
                       device):
    """Images for the fixed validation prompts with the current (or EMA) weights."""
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline

    v = cfg.validation
    pipe = StableDiffusionPipeline(unet=model.unet, vae=vae, text_encoder=model.text_encoder,
                                   tokenizer=tokenizer, scheduler=scheduler.__class__.from_config(
                                       scheduler.config),
                                   safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    folder = out / "samples" / f"step-{step:08d}"
    folder.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i, prompt in enumerate(v.prompts):
                g = torch.Generator(device=device).manual_seed(v.seed + i)
                img = pipe(prompt, num_inference_steps=v.steps, guidance_scale=v.guidance,
                           generator=g, height=cfg.data.resolution, width=cfg.data.resolution,
                           output_type="np").images[0]
                gray = np.asarray(img, dtype=np.float32).mean(-1)
                save_png(folder / f"{i:02d}.png", gray)
                scalars.image(f"samples/{i:02d}", gray, step)
        (folder / "prompts.txt").write_text("\n".join(v.prompts) + "\n")
    finally:
        model.train(was_training)


def _save_checkpoint(accelerator, ckpt_root: Path, step: int, keep_last: int) -> Path:
    final = ckpt_root / f"step-{step:08d}"
    tmp = ckpt_root / f".tmp-step-{step:08d}"
    if accelerator.is_main_process:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # Rename only when every process has written: a crash never leaves a half checkpoint.
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in find_checkpoints(ckpt_root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def train_generator(cfg: TrainGeneratorConfig, components=None,
                    on_step: Callable[[int, dict], None] | None = None) -> Path:
    """Fine-tune and write a diffusers pipeline folder; returns its path.

    components: in-memory `rv2.models.sd.SDComponents` (e.g. tiny ones) instead of
    `model.base`; they are trained in place. on_step(step, row) is called on the
    main process after every optimizer step (row: loss, lr, ...).
    """
    import numpy as np
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    cfg.validate()
    out = Path(cfg.output_dir).expanduser()
    cuda = torch.cuda.is_available()
    mp = cfg.model.mixed_precision if cuda else "no"
    accelerator = Accelerator(mixed_precision=mp, cpu=not cuda)
    if mp != cfg.model.mixed_precision:
        log.warning("no GPU: training in fp32 (mixed_precision=%s ignored; bf16 on CPU is ~75x "
                    "slower)", cfg.model.mixed_precision)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    main = accelerator.is_main_process
    dev = accelerator.device
    W, B, A = accelerator.num_processes, cfg.optim.batch_size, cfg.optim.grad_accum

    dataset = td.build_dataset(cfg.data)  # before the model: bad data fails fast
    comps, base_desc = _build_components(cfg, components)
    unet, vae, text_encoder, tokenizer = comps.unet, comps.vae, comps.text_encoder, comps.tokenizer
    pred_type = comps.scheduler.config.get("prediction_type", "epsilon")
    noise_sched = sd.ddpm_train_scheduler()
    if pred_type != noise_sched.config.prediction_type:
        noise_sched = noise_sched.__class__.from_config(noise_sched.config, prediction_type=pred_type)

    vae_dtype = torch.bfloat16 if mp == "bf16" else torch.float32  # fp16 VAE encodes can overflow
    vae.requires_grad_(False).eval().to(dev)
    if vae.dtype != vae_dtype:
        vae.to(dtype=vae_dtype)
    unet.requires_grad_(True).train()
    text_encoder.requires_grad_(cfg.model.train_text_encoder).train()
    if cfg.model.attention == "sdpa":
        from diffusers.models.attention_processor import AttnProcessor2_0

        unet.set_attn_processor(AttnProcessor2_0())
    else:
        from diffusers.models.attention_processor import AttnProcessor

        unet.set_attn_processor(AttnProcessor())
    if cfg.model.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if cfg.model.train_text_encoder:
            # Non-reentrant checkpointing works under DDP without find_unused_parameters.
            kw = {"use_reentrant": False}
            if hasattr(text_encoder, "activation_checkpointing_enable"):  # transformers >= 5.x
                text_encoder.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
            else:
                text_encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)

    model = _denoiser_cls()(unet, text_encoder, cfg.model.train_text_encoder)
    params = [p for p in model.parameters() if p.requires_grad]
    o = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                                  weight_decay=o.weight_decay)
    from diffusers.optimization import get_scheduler

    lr_sched = get_scheduler(o.schedule, optimizer, num_warmup_steps=o.warmup_steps,
                             num_training_steps=o.max_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(model)
    ema = None
    if cfg.model.ema:
        from diffusers.training_utils import EMAModel

        ema = EMAModel([p for p in raw.parameters() if p.requires_grad], decay=cfg.model.ema_decay)
        ema.to(dev)
    state = TrainState(len(dataset), cfg.seed)
    # The LR schedule is stepped by hand once per optimizer step (not prepared: accelerate
    # would step it once per process), and saved with the state like the counters and EMA.
    accelerator.register_for_checkpointing(lr_sched, state)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)

    ckpt_root = out / "checkpoints"
    resume_from = _resolve_resume(cfg, ckpt_root)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        if ema is not None:
            ema.to(dev)  # loaded shadow weights may land on the CPU
        log.info("resumed from %s at step %d (%d samples)", resume_from, state.step, state.samples)
    elif main and find_checkpoints(ckpt_root):
        log.warning("checkpoint.resume=none: existing checkpoints in %s will be replaced", ckpt_root)
    start_step = state.step

    # Data: pixels, or VAE moments from the cache.
    cached = cfg.data.latent_cache
    if cached:
        cache_dir = Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else out / "latent_cache"
        moments = build_latent_cache(accelerator, dataset, vae, cache_dir, B, vae_dtype)
        train_ds = td.LatentCacheDataset(moments, [r.prompt for r in dataset.records])
        collate = td.Collate(tokenizer, "moments")
    else:
        train_ds, collate = dataset, td.Collate(tokenizer, "pixels")
    sampler = td.StreamSampler(len(train_ds), B, cfg.seed, start=state.samples,
                               rank=accelerator.process_index, world=W)
    nw = cfg.data.num_workers
    loader = torch.utils.data.DataLoader(train_ds, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=nw, pin_memory=cuda,
                                         prefetch_factor=4 if nw else None,
                                         persistent_workers=bool(nw))
    batches = iter(loader)

    scalars = _ScalarLog(out / "logs", start_step, cfg.logging.tensorboard) if main else None
    bar = tqdm(total=o.max_steps, initial=start_step, desc="train-generator", unit="step",
               disable=not (main and cfg.logging.progress), dynamic_ncols=True)
    n_items = len(train_ds)
    gen_dev = dev if dev.type == "cuda" else torch.device("cpu")
    T = noise_sched.config.num_train_timesteps
    micro = 0  # micro-steps done in this process lifetime
    t_window, s_window, t_start = time.perf_counter(), 0, time.perf_counter()
    loss_hist: list[float] = []
    last_ckpt_step = start_step
    scaling = sd.VAE_SCALING
    empty_ids = td.tokenize(tokenizer, [""])  # the unconditional input of guidance

    def micro_step(batch, m):
        positions = sampler.positions(m)
        gens = [torch.Generator(device=gen_dev).manual_seed(sample_seed(cfg.seed, p))
                for p in positions]
        with torch.no_grad():
            if cached:
                mom = batch["moments"].to(dev, non_blocking=True)
            else:
                mom = vae.encode(batch["pixels"].to(dev, vae_dtype, non_blocking=True)
                                 ).latent_dist.parameters
            mean, logvar = mom.float().chunk(2, dim=1)
            std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
            shp = mean.shape[1:]
            eps = torch.stack([torch.randn(shp, generator=g, device=gen_dev) for g in gens])
            noise = torch.stack([torch.randn(shp, generator=g, device=gen_dev) for g in gens])
            t = torch.cat([torch.randint(0, T, (1,), generator=g, device=gen_dev) for g in gens])
            latents = (mean + std * eps.to(dev)) * scaling
            noise, t = noise.to(dev), t.to(dev)
            noisy = noise_sched.add_noise(latents, noise, t)
            target = noise if pred_type == "epsilon" else noise_sched.get_velocity(latents, noise, t)
            ids = batch["input_ids"].to(dev, non_blocking=True)
            if cfg.model.prompt_dropout > 0:
                # drawn after the other draws, so that dropout 0 leaves trajectories unchanged
                drop = torch.cat([torch.rand((1,), generator=g, device=gen_dev) for g in gens])
                drop = (drop < cfg.model.prompt_dropout).to(dev)
                ids = torch.where(drop[:, None], empty_ids.to(dev), ids)
        pred = model(noisy, t, ids)
        return F.mse_loss(pred.float(), target.float())

    try:
        while state.step < o.max_steps:
            loss_sum = torch.zeros((), device=dev)
            for a in range(A):
                batch = next(batches)
                if a < A - 1:
                    with accelerator.no_sync(model):
                        loss = micro_step(batch, micro)
                        accelerator.backward(loss / A)
                else:
                    loss = micro_step(batch, micro)
                    accelerator.backward(loss / A)
                loss_sum += loss.detach()
                micro += 1
            grad_norm = None
            if o.max_grad_norm > 0:
                grad_norm = accelerator.clip_grad_norm_(params, o.max_grad_norm)
            lr = lr_sched.get_last_lr()[0]
            optimizer.step()
            lr_sched.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.step([p for p in raw.parameters() if p.requires_grad])
            state.step += 1
            state.samples += B * W * A
            s_window += B * W * A
            step_loss = accelerator.reduce(loss_sum / A, reduction="mean").item()
            loss_hist.append(step_loss)
            if not math.isfinite(step_loss):
                raise FloatingPointError(f"loss is {step_loss} at step {state.step}; lower optim.lr "
                                         "or use mixed_precision=bf16 instead of fp16")
            if main:
                elapsed = time.perf_counter() - t_window
                sps = s_window / elapsed if elapsed > 0 else float("nan")
                row = {"step": state.step, "loss": f"{step_loss:.8g}", "lr": f"{lr:.6g}",
                       "grad_norm": "" if grad_norm is None else f"{float(grad_norm):.6g}",
                       "samples_per_s": f"{sps:.4g}", "epoch": f"{state.samples / n_items:.4f}",
                       "samples": state.samples}
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}", sps=f"{sps:.1f}")
                if state.step % cfg.logging.every == 0 or state.step == o.max_steps:
                    scalars.write(row)
                    t_window, s_window = time.perf_counter(), 0
                if on_step is not None:
                    on_step(state.step, row)
            ce, ve = cfg.checkpoint.every, cfg.validation.every
            if ce and state.step % ce == 0 and state.step < o.max_steps:
                _save_checkpoint(accelerator, ckpt_root, state.step, cfg.checkpoint.keep_last)
                last_ckpt_step = state.step
            if ve and state.step % ve == 0 and cfg.validation.prompts:
                if main:
                    with _ema_weights(ema, raw):
                        _sample_validation(cfg, raw, vae, tokenizer, comps.scheduler, state.step,
                                           out, scalars, gen_dev)
                accelerator.wait_for_everyone()
        if last_ckpt_step != state.step:
            _save_checkpoint(accelerator, ckpt_root, state.step, cfg.checkpoint.keep_last)
    finally:
        bar.close()
        if scalars is not None:
            scalars.close()

    pipe_dir = out / "pipeline"
    if main:
        wall = time.perf_counter() - t_start
        done_here = state.step - start_step
        summary = {
            "steps": state.step, "steps_this_run": done_here, "samples_seen": state.samples,
            "epochs": state.samples / n_items, "dataset_items": n_items,
            "global_batch": B * W * A, "processes": W, "mixed_precision": mp,
            "device": str(dev), "resumed_from": str(resume_from) if resume_from else None,
            "wall_s_this_run": wall,
            "samples_per_s_this_run": done_here * B * W * A / wall if wall > 0 else None,
            "final_loss_mean_last10": float(np.mean(loss_hist[-10:])) if loss_hist else None,
            "base": base_desc, "ema": cfg.model.ema,
        }
        with _ema_weights(ema, raw):
            if vae.dtype != torch.float32:
                vae.to(dtype=torch.float32)
            export = sd.SDComponents(raw.unet, vae, raw.text_encoder, tokenizer, comps.scheduler)
            if pipe_dir.exists():
                shutil.rmtree(pipe_dir)
            sd.save_pipeline(export, pipe_dir)
        cfg.save(pipe_dir / "config.yaml")
        atomic_write_text(pipe_dir / "training_summary.json", json.dumps(summary, indent=2))
        write_artifact_meta(pipe_dir, cfg, inputs=_inputs(cfg), extra={"training": summary})
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return pipe_dir


class _ema_weights:
    """Within the block the model holds the EMA weights (no-op without EMA)."""

    def __init__(self, ema, model):
        self.ema, self.params = ema, [p for p in model.parameters() if p.requires_grad]

    def __enter__(self):
        if self.ema is not None:
            self.ema.store(self.params)
            self.ema.copy_to(self.params)

    def __exit__(self, *exc):
        if self.ema is not None:
            self.ema.restore(self.params)


def _inputs(cfg) -> list:
    """Inputs hashed into rv2_meta.json: the table or the shards, and the base model folder."""
    from rv2.finetune.data import _expand_shards

    d = cfg.data
    items: list = []
    if d.source == "prompts" and d.prompts_table:
        items.append(d.prompts_table)
    elif d.source == "wds":
        items.extend(_expand_shards(d.shards))
    elif d.source == "folder" and d.prompt_dir and d.prompt_dir != d.image_dir:
        items.append(d.prompt_dir)
    if cfg.model.base:
        items.append(cfg.model.base)
    return [p for p in items if Path(p).exists()] if items else []


__all__ = ["build_latent_cache", "find_checkpoints", "sample_seed", "train_generator"]


def denoising_loss(components, pixels, prompts: list[str], seed: int = 0, draws: int = 8) -> float:
    """Mean epsilon-MSE of the model on fixed images with fixed timesteps and noise.

    A deterministic yardstick (unlike the training loss, which draws new noise each
    step): the overfit test and the demo compare it before and after training.
    pixels: [N, 3, R, R] in [-1, 1].
    """
    import torch
    from rv2.finetune.data import tokenize

    sched = sd.ddpm_train_scheduler()
    unet, vae, te = components.unet, components.vae, components.text_encoder
    dev = next(unet.parameters()).device
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    with torch.no_grad():
        dist = vae.encode(pixels.to(dev, vae.dtype)).latent_dist
        enc = te(tokenize(components.tokenizer, prompts).to(dev))[0]
        for _ in range(draws):
            lat = (dist.mean.float() + dist.std.float()
                   * torch.randn(dist.mean.shape, generator=g).to(dev)) * sd.VAE_SCALING
            noise = torch.randn(lat.shape, generator=g).to(dev)
            t = torch.randint(0, sched.config.num_train_timesteps, (lat.shape[0],), generator=g).to(dev)
            pred = unet(sched.add_noise(lat, noise, t), t, enc).sample
            total += float(torch.nn.functional.mse_loss(pred.float(), noise))
    return total / draws
