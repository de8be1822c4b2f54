"""`train_classifier(cfg)`: the four strategies, one resumable training loop.

Phases per strategy (paper, Methods):
  real               ImageNet init (init=auto), train on the real subset, lr
  synthetic          ImageNet init, train on synthetic images, lr
  mixed              ImageNet init, train on real subset + n_synthetic images, lr
                     (n_synthetic=0: the real subset alone, the origin of a supplementation curve)
  pretrain-finetune  scratch init, train on synthetic (lr) into OUT/pretrain/,
                     then fine-tune its best checkpoint on the real subset (finetune_lr)

Each phase: masked BCE, AdamW, the learning-rate schedule `lr_schedule` (cosine
decay per step planned over `expected_epochs`, default `epochs`; reduce on a
validation-loss plateau; or constant; recorded with the model), up to
`epochs`, early stop when the validation loss has not improved for
`patience` epochs, best checkpoint by mean validation AUROC over the labels that
have both classes (ties and all-NaN fall back to the lower validation loss).
After every epoch the full state (weights, optimizer, schedule, history, best)
is written atomically to state/last.pt; rerunning the same command resumes from
it and gives the same weights as an uninterrupted run (data order is a function
of seed, phase and epoch; there is no other randomness).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from rv2.classify import data as cdata
from rv2.classify import model_dir as md
from rv2.classify.config import STRATEGIES, ClassifierConfig
from rv2.classify.losses import masked_bce
from rv2.classify.metrics import auroc_per_label, mean_defined
from rv2.classify.thresholds import best_f1_thresholds
from rv2.config import write_artifact_meta
from rv2.data.dali import dali_device
from rv2.data.label_policy import LabelPolicy
from rv2.data.manifest import read_manifest
from rv2.data.schema import CHEXPERT_LABELS
from rv2.data.views import describe_views, select_views
from rv2.errors import UserError
from rv2.files import atomic_path, atomic_write_text, dumps
from rv2.models.densenet import densenet121, model_config

log = logging.getLogger(__name__)

# Settings that may change between a crash and its resume without changing the result.
RUNTIME_KEYS = ("device", "num_workers", "progress", "cache_images", "eval_batch_size", "time_limit_s",
                "out")


class TrainingStateError(UserError):
    """An output folder holding a different run."""


@dataclasses.dataclass
class Phase:
    name: str            # main | pretrain | finetune
    dir: Path
    train: object        # a torch Dataset
    init: str            # imagenet | scratch | a model dir to start from
    lr: float
    epochs: int
    index: int           # for the data-order seed


def train_classifier(cfg: ClassifierConfig, *, on_epoch_end: Callable | None = None) -> Path:
    """Train as cfg says into cfg.out; resume if that folder holds the same, unfinished run.

    on_epoch_end(phase_name, epoch, row) is called after each epoch's state is saved
    (tests use it to simulate a crash). Returns the model folder.
    """

    _validate(cfg)
    out = Path(cfg.out)
    if _complete(out):
        _check_same_run(out, cfg)
        log.info("%s already holds this completed run", out)
        return out
    out.mkdir(parents=True, exist_ok=True)
    _check_same_run(out, cfg)
    cfg.save(out / md.CONFIG)

    from rv2.models.device import resolve_device

    device = resolve_device(cfg.device)
    sets = load_datasets(cfg, out)
    phases = plan_phases(cfg, out, sets)
    for ph in phases:
        if _complete(ph.dir):
            continue
        model = _initial_model(cfg, ph)
        run_phase(cfg, ph, model, sets["val"], device, on_epoch_end=on_epoch_end)
        finalize(cfg, ph, sets, device)
    return out


# ----------------------------------------------------------------- setup

def _validate(cfg: ClassifierConfig) -> None:
    if cfg.strategy not in STRATEGIES:
        raise UserError(f"strategy must be one of {STRATEGIES}, got {cfg.strategy!r}")
    if not cfg.out:
        raise UserError("an output folder is required (--out DIR)")
    needs_real = cfg.strategy in ("real", "mixed", "pretrain-finetune")
    needs_syn = cfg.strategy == "synthetic" or (cfg.strategy == "mixed" and cfg.n_synthetic != 0) or (
        cfg.strategy == "pretrain-finetune" and not cfg.pretrained_from)
    if needs_real and not cfg.real:
        raise UserError(f"strategy {cfg.strategy!r} needs a real training manifest (--real)")
    if needs_syn and not cfg.synthetic:
        raise UserError(f"strategy {cfg.strategy!r} needs a synthetic manifest (--synthetic)")
    if not cfg.val and not cfg.real:
        raise UserError("a validation manifest is required (--val), or a real manifest with a val split")
    if cfg.image_size < 32:  # DenseNet-121 downsamples by 32
        raise UserError(f"image_size must be at least 32, got {cfg.image_size}")
    for name in ("epochs", "patience", "batch_size"):
        if getattr(cfg, name) < 1:
            raise UserError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.expected_epochs is not None and cfg.expected_epochs < 1:
        raise UserError(f"expected_epochs must be at least 1, got {cfg.expected_epochs}")
    if not 0.0 <= cfg.min_lr_ratio <= 1.0:
        raise UserError(f"min_lr_ratio must be in [0, 1], got {cfg.min_lr_ratio}")
    if not 0.0 < cfg.plateau_factor < 1.0 or cfg.plateau_patience < 0:
        raise UserError(f"plateau_factor must be in (0, 1) and plateau_patience >= 0, got "
                        f"{cfg.plateau_factor} and {cfg.plateau_patience}")
    if cfg.cache_images and cfg.num_workers > 0:
        log.warning("cache_images only helps with num_workers=0 (each worker has its own memory)")


def _complete(d: Path) -> bool:
    return all((d / f).is_file() for f in md.REQUIRED) and not (d / md.STATE).is_file()


def _comparable(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in RUNTIME_KEYS}


def _check_same_run(out: Path, cfg: ClassifierConfig) -> None:
    f = out / md.CONFIG
    if not f.is_file():
        if (out / md.STATE).is_file():
            raise TrainingStateError(f"{out}: training state without {md.CONFIG}; use a new --out")
        return
    old = _comparable(ClassifierConfig.load(f).to_dict())
    new = _comparable(cfg.to_dict())
    if old != new:
        diff = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
        raise TrainingStateError(
            f"{out} holds a run with other settings {diff} (saved, now); use a new --out "
            "or delete that folder to start over")


def load_datasets(cfg: ClassifierConfig, out: Path) -> dict:
    """Train/val ManifestDatasets per the strategy, with normalization and label policy."""
    from rv2.data.torch_dataset import ManifestDataset

    frames: dict[str, tuple[pd.DataFrame, Path]] = {}
    summary: dict = {}
    real_full = None
    views: dict = {}

    def read(path: str, what: str) -> pd.DataFrame:
        df = read_manifest(path)
        kept = select_views(df, cfg.views, name=str(path), what=f"the classifier's {what} set")
        views[what] = describe_views(cfg.views, df, kept)
        return kept

    if cfg.real:
        real_full, sub = real_subset(cfg, read(cfg.real, "real"))
        frames["real"] = (sub, cdata.manifest_root(cfg.real, cfg.real_root, cfg.root))
        summary["real_available"] = cdata.describe(real_full)
        summary["real_used"] = cdata.describe(sub)
    if cfg.synthetic and cfg.strategy != "real" and not (cfg.strategy == "mixed" and cfg.n_synthetic == 0):
        sdf = read(cfg.synthetic, "synthetic")
        ssub = cdata.image_sample(sdf, cfg.n_synthetic, seed=cfg.subset_seed)
        frames["synthetic"] = (ssub, cdata.manifest_root(cfg.synthetic, cfg.synthetic_root, cfg.root))
        summary["synthetic_available"] = cdata.describe(sdf)
        summary["synthetic_used"] = cdata.describe(ssub)
    if cfg.val:
        vdf = cdata.val_rows(read(cfg.val, "val"), cfg.val_split, cfg.val)
        vroot = cdata.manifest_root(cfg.val, cfg.val_root, cfg.root)
    else:
        vdf = cdata.val_rows(read(cfg.real, "val"), cfg.val_split or "val", cfg.real)
        vroot = cdata.manifest_root(cfg.real, cfg.real_root, cfg.root)
    summary["val"] = cdata.describe(vdf)
    summary["views"] = views

    policy = LabelPolicy.parse(cfg.label_policy)
    summary["label_policy"] = str(policy)
    summary["labels_kept"] = {
        k: dict(zip(CHEXPERT_LABELS, policy.kept(
            df[list(CHEXPERT_LABELS)].to_numpy(dtype=np.float64, na_value=np.nan)).tolist()))
        for k, df in [*((k, f[0]) for k, f in frames.items()), ("val", vdf)]
        if all(c in df.columns for c in CHEXPERT_LABELS)}

    common = dict(image_size=cfg.image_size, labels=CHEXPERT_LABELS, label_policy=policy,
                  decoder=cfg.decoder,
                  dali_device_id=dali_device(cfg.decoder, _device(cfg.device), cfg.num_workers))
    norm = _normalization(cfg, out, real_full, frames, common)
    summary["normalization"] = norm
    ds = {k: ManifestDataset(df, root, mean=norm["mean"], std=norm["std"], cache=cfg.cache_images,
                             name=k, **common) for k, (df, root) in frames.items()}
    ds["val"] = ManifestDataset(vdf, vroot, mean=norm["mean"], std=norm["std"], cache=cfg.cache_images,
                                name="val", **common)
    if len(ds["val"]) == 0:
        raise UserError("the validation set is empty")
    ds["summary"] = summary
    ds["norm"] = norm
    return ds


def real_subset(cfg: ClassifierConfig, df: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the real manifest's training rows, the run's label-efficiency subset of them).

    df: the real manifest read with the run's views (default: read here)."""
    if df is None:
        df = select_views(read_manifest(cfg.real), cfg.views, name=str(cfg.real),
                          what="the classifier's real set")
    full = cdata.select_split(df, cfg.train_split, cfg.real)
    return full, cdata.patient_subset(full, n=cfg.n_real, fraction=cfg.real_fraction, seed=cfg.subset_seed)


def _normalization(cfg, out: Path, real_full, frames, common) -> dict:
    from rv2.data.torch_dataset import ManifestDataset, pixel_stats

    f = out / md.NORMALIZATION
    if f.is_file():  # computed once, reused on resume
        return md.read_json(f)
    if cfg.norm_mean is not None or cfg.norm_std is not None:
        if cfg.norm_mean is None or cfg.norm_std is None:
            raise UserError("set both norm_mean and norm_std, or neither")
        norm = {"mean": cfg.norm_mean, "std": cfg.norm_std, "source": "config"}
    elif cfg.strategy == "pretrain-finetune" and cfg.pretrained_from:
        mcfg = md.read_json(md.check_model_dir(cfg.pretrained_from) / md.MODEL_CONFIG)
        norm = {**mcfg["normalization"], "source": f"pretrained model {cfg.pretrained_from}"}
        if int(mcfg["image_size"]) != cfg.image_size:
            raise UserError(f"{cfg.pretrained_from} was trained at image_size {mcfg['image_size']}, "
                             f"this run uses {cfg.image_size}")
    else:
        # The paper normalizes by the real training set; the full set, so that every
        # label-efficiency subset and a shared synthetic pretraining see the same input scale.
        if real_full is not None:
            src_df, root, src = real_full, cdata.manifest_root(cfg.real, cfg.real_root, cfg.root), cfg.real
        else:
            src_df, root = frames["synthetic"]
            src = cfg.synthetic
        stats_ds = ManifestDataset(src_df, root, require_labels=False, name=f"{Path(src).name}",
                                   **{k: v for k, v in common.items() if k != "label_policy"})
        norm = {**pixel_stats(stats_ds, max_images=cfg.norm_max_images, seed=cfg.seed,
                              progress=cfg.progress), "source": str(src)}
    norm["image_size"] = cfg.image_size
    atomic_write_text(f, _dumps(norm))
    return norm


def plan_phases(cfg: ClassifierConfig, out: Path, sets: dict) -> list[Phase]:
    from torch.utils.data import ConcatDataset

    init = cfg.init if cfg.init != "auto" else "imagenet"
    if cfg.strategy == "real":
        return [Phase("main", out, sets["real"], init, cfg.lr, cfg.epochs, 0)]
    if cfg.strategy == "synthetic":
        return [Phase("main", out, sets["synthetic"], init, cfg.lr, cfg.epochs, 0)]
    if cfg.strategy == "mixed":
        parts = [sets["real"]] + ([sets["synthetic"]] if "synthetic" in sets else [])
        return [Phase("main", out, ConcatDataset(parts), init, cfg.lr, cfg.epochs, 0)]
    phases = []
    pre_dir = Path(cfg.pretrained_from) if cfg.pretrained_from else out / "pretrain"
    if not cfg.pretrained_from:
        pre_init = cfg.init if cfg.init != "auto" else "scratch"
        phases.append(Phase("pretrain", pre_dir, sets["synthetic"], pre_init, cfg.lr,
                            cfg.pretrain_epochs or cfg.epochs, 0))
    else:
        md.check_model_dir(pre_dir)
    phases.append(Phase("finetune", out, sets["real"], str(pre_dir), cfg.finetune_lr, cfg.epochs, 1))
    return phases


def _initial_model(cfg: ClassifierConfig, ph: Phase):
    import torch

    torch.manual_seed(cfg.seed + 1000 * ph.index)
    if ph.init in ("imagenet", "scratch"):
        return densenet121(len(CHEXPERT_LABELS), init=ph.init, weights_dir=cfg.weights_dir)
    model = densenet121(len(CHEXPERT_LABELS), init="scratch")
    md.load_weights(model, Path(ph.init) / md.WEIGHTS)
    return model


# ----------------------------------------------------------------- loop

def _loader(ds, batch_size, order, cfg, device, drop_last=False):
    from torch.utils.data import DataLoader

    return DataLoader(ds, batch_size=batch_size, sampler=order, num_workers=cfg.num_workers,
                      pin_memory=device.type == "cuda", drop_last=drop_last,
                      persistent_workers=False)


def _autocast(device, cfg):
    import contextlib

    import torch

    if device.type == "cuda" and cfg.amp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _check_batch(batch, cfg, skipped: list, where: str) -> None:
    ok = batch["ok"]
    if bool(ok.all()):
        return
    bad = [(batch["image_id"][i], batch["error"][i]) for i in range(len(ok)) if not bool(ok[i])]
    if cfg.on_bad_image == "error":
        lines = "\n".join(f"  {iid}: {err}" for iid, err in bad[:10])
        raise UserError(f"{len(bad)} unreadable image(s) in the {where} set:\n{lines}\n"
                         "Fix or drop them (`rv2 data index --verify-files`), or set on_bad_image=skip.")
    skipped.extend({"set": where, "image_id": i, "reason": e} for i, e in bad)


def evaluate(model, ds, cfg, device, skipped: list | None = None):
    """(mean masked BCE, probs N x L, target, mask) over a dataset, in manifest order."""
    import torch
    from tqdm.auto import tqdm

    bs = cfg.eval_batch_size or 2 * cfg.batch_size
    loader = _loader(ds, bs, list(range(len(ds))), cfg, device)
    probs, targets, masks = [], [], []
    total, weight = 0.0, 0.0
    model.eval()
    with torch.no_grad():
        for batch in tqdm(loader, desc="validate", leave=False, disable=not cfg.progress):
            if skipped is not None:
                _check_batch(batch, cfg, skipped, "validation")
            x = batch["image"].to(device, non_blocking=True)
            if device.type == "cuda" and cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device, cfg):
                logits = model(x)
            logits = logits.float().cpu()
            t, m = batch["target"], batch["mask"]
            w = float(m.sum())
            if w > 0:
                total += float(masked_bce(logits, t, m)) * w
                weight += w
            probs.append(torch.sigmoid(logits).numpy())
            targets.append(t.numpy())
            masks.append(m.numpy())
    loss = total / weight if weight > 0 else float("nan")
    return loss, np.concatenate(probs), np.concatenate(targets), np.concatenate(masks)


def run_phase(cfg: ClassifierConfig, ph: Phase, model, val_ds, device, *,
              on_epoch_end: Callable | None = None) -> None:
    import torch
    from tqdm.auto import tqdm

    ph.dir.mkdir(parents=True, exist_ok=True)
    state_file = ph.dir / md.STATE
    n = len(ph.train)
    if n < 2:
        raise UserError(f"{ph.name}: the training set has {n} image(s); at least 2 are needed")
    drop_last = n % cfg.batch_size == 1  # a batch of one breaks BatchNorm in train mode
    steps_per_epoch = n // cfg.batch_size if drop_last else math.ceil(n / cfg.batch_size)
    total_steps = ph.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)

    model.to(device)
    if device.type == "cuda" and cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=ph.lr, weight_decay=cfg.weight_decay)
    plan = lr_plan(cfg, ph, steps_per_epoch)
    sched = make_scheduler(opt, plan)

    st = {"epoch": 0, "step": 0, "best_key": None, "best_epoch": None, "best_val_loss": math.inf,
          "bad_epochs": 0, "history": [], "finished": False, "stop_reason": None, "skipped": [],
          "train_seconds": 0.0, "lr_plan": plan}
    if state_file.is_file():
        saved = torch.load(state_file, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        st = saved["loop"]
        st.setdefault("lr_plan", plan)  # states saved before the plan was recorded
        log.info("%s: resuming %s after epoch %d (step %d)", ph.dir, ph.name, st["epoch"], st["step"])
    labels = list(CHEXPERT_LABELS)
    t_phase = time.monotonic()
    while not st["finished"]:
        epoch = st["epoch"]
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + ph.index * 10_007 + epoch)
        order = torch.randperm(n, generator=g).tolist()
        loader = _loader(ph.train, cfg.batch_size, order, cfg, device, drop_last=drop_last)
        model.train()
        t0 = time.monotonic()
        loss_sum, batches, seen = 0.0, 0, 0
        stop_reason = None
        bar = tqdm(loader, desc=f"{ph.name} epoch {epoch + 1}/{ph.epochs}", leave=False,
                   disable=not cfg.progress)
        for batch in bar:
            _check_batch(batch, cfg, st["skipped"], "training")
            x = batch["image"].to(device, non_blocking=True)
            if device.type == "cuda" and cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            t = batch["target"].to(device, non_blocking=True)
            m = batch["mask"].to(device, non_blocking=True)
            with _autocast(device, cfg):
                logits = model(x)
            loss = masked_bce(logits, t, m)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if plan["kind"] != "plateau":
                sched.step()
            st["step"] += 1
            loss_sum += float(loss.detach())
            batches += 1
            seen += x.shape[0]
            bar.set_postfix(loss=f"{loss_sum / batches:.4f}")
            if cfg.max_steps is not None and st["step"] >= cfg.max_steps:
                stop_reason = f"max_steps {cfg.max_steps} reached"
                break
            if cfg.time_limit_s is not None and st["train_seconds"] + time.monotonic() - t_phase >= cfg.time_limit_s:
                stop_reason = f"time limit {cfg.time_limit_s}s reached"
                break
        train_time = time.monotonic() - t0
        val_loss, probs, target, mask = evaluate(model, val_ds, cfg, device, st["skipped"])
        aurocs = auroc_per_label(target, mask, probs, labels)
        mean_auc, n_auc = mean_defined(aurocs)
        st["epoch"] = epoch + 1
        if plan["kind"] == "plateau":
            sched.step(val_loss if math.isfinite(val_loss) else math.inf)
        # best: higher mean AUROC; NaN ranks lowest; then lower validation loss
        key = (mean_auc if math.isfinite(mean_auc) else -math.inf, -val_loss if math.isfinite(val_loss) else -math.inf)
        improved = st["best_key"] is None or key > tuple(st["best_key"])
        if improved:
            st["best_key"], st["best_epoch"] = list(key), st["epoch"]
            md.save_weights(model, ph.dir / md.WEIGHTS)
        if val_loss < st["best_val_loss"]:
            st["best_val_loss"], st["bad_epochs"] = val_loss, 0
        else:
            st["bad_epochs"] += 1
        row = {"phase": ph.name, "epoch": st["epoch"], "step": st["step"], "lr": opt.param_groups[0]["lr"],
               "train_loss": loss_sum / max(batches, 1), "val_loss": val_loss, "val_auroc_mean": mean_auc,
               "n_auroc_labels": n_auc, "train_images": seen, "train_seconds": train_time,
               "train_images_per_s": seen / train_time if train_time > 0 else float("nan"),
               "best": improved, **{f"auroc/{k}": v for k, v in aurocs.items()}}
        st["history"].append(row)
        if stop_reason is None and st["bad_epochs"] >= cfg.patience:
            stop_reason = f"early stop: validation loss not improved for {cfg.patience} epochs"
        if stop_reason is None and st["epoch"] >= ph.epochs:
            stop_reason = f"{ph.epochs} epochs done"
        if stop_reason is None and st["step"] >= total_steps:
            stop_reason = f"{total_steps} steps done"
        if stop_reason:
            st["finished"], st["stop_reason"] = True, stop_reason
        st["train_seconds"] += time.monotonic() - t_phase
        t_phase = time.monotonic()
        _save_state(state_file, model, opt, sched, st)
        _write_history(ph.dir, st["history"])
        log.info("%s epoch %d: train %.4f val %.4f auroc %.4f%s", ph.name, st["epoch"], row["train_loss"],
                 val_loss, mean_auc, " *" if improved else "")
        if on_epoch_end is not None:
            on_epoch_end(ph.name, st["epoch"], row)


def lr_plan(cfg: ClassifierConfig, ph: Phase, steps_per_epoch: int) -> dict:
    """The learning-rate schedule of a phase, as recorded with the model."""
    if cfg.lr_schedule == "cosine":
        epochs = min(cfg.expected_epochs or ph.epochs, ph.epochs)
        steps = epochs * steps_per_epoch
        if cfg.max_steps is not None:
            steps = min(steps, cfg.max_steps)
        return {"kind": "cosine", "start_lr": ph.lr, "end_lr": ph.lr * cfg.min_lr_ratio,
                "planned_epochs": epochs, "planned_steps": steps,
                "planned_over": "expected_epochs" if cfg.expected_epochs else "epochs"}
    if cfg.lr_schedule == "plateau":
        return {"kind": "plateau", "start_lr": ph.lr, "factor": cfg.plateau_factor,
                "patience": cfg.plateau_patience, "monitor": "validation loss"}
    return {"kind": "constant", "start_lr": ph.lr, "end_lr": ph.lr}


def make_scheduler(opt, plan: dict):
    """A torch scheduler for `plan`: per step (cosine, constant) or per epoch (plateau)."""
    import torch

    if plan["kind"] == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=plan["factor"],
                                                          patience=plan["patience"])
    if plan["kind"] == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    total, end = max(plan["planned_steps"], 1), plan["end_lr"] / plan["start_lr"]

    def cosine(s: int) -> float:  # from 1 to `end` over the planned steps, then held
        return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total))

    return torch.optim.lr_scheduler.LambdaLR(opt, cosine)


def _save_state(path: Path, model, opt, sched, st: dict) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "loop": st}, tmp)


def _write_history(d: Path, history: list[dict]) -> None:
    atomic_write_text(d / md.HISTORY, pd.DataFrame(history).to_csv(index=False))


def _dumps(obj) -> str:
    return dumps(obj, indent=2)


# ----------------------------------------------------------------- finish

def finalize(cfg: ClassifierConfig, ph: Phase, sets: dict, device) -> None:
    """Best weights -> validation thresholds, model config, metadata; drop the training state."""
    import torch

    state = torch.load(ph.dir / md.STATE, map_location="cpu", weights_only=False)["loop"]
    model = densenet121(len(CHEXPERT_LABELS), init="scratch")
    md.load_weights(model, ph.dir / md.WEIGHTS)
    model.to(device)
    val_loss, probs, target, mask = evaluate(model, sets["val"], cfg, device)
    labels = list(CHEXPERT_LABELS)
    y = np.where(mask > 0, target, np.nan)
    thr = best_f1_thresholds(y, probs, labels)
    aurocs = auroc_per_label(target, mask, probs, labels)
    mean_auc, n_auc = mean_defined(aurocs)
    thr["source"] = "validation set, best checkpoint"
    # the policy the loss and these thresholds used; rv2 evaluate checks against it
    thr["label_policy"] = cfg.label_policy
    atomic_write_text(ph.dir / md.THRESHOLDS, _dumps(thr))
    norm = sets["norm"]
    mcfg = model_config(labels, cfg.image_size, norm["mean"], norm["std"])
    mcfg["label_policy"] = cfg.label_policy
    mcfg["lr_schedule"] = state.get("lr_plan")
    atomic_write_text(ph.dir / md.MODEL_CONFIG, _dumps(mcfg))
    atomic_write_text(ph.dir / md.NORMALIZATION, _dumps(norm))
    if ph.dir != Path(cfg.out):
        cfg.save(ph.dir / md.CONFIG)
    if state["skipped"]:
        atomic_write_text(ph.dir / "skipped_images.csv", pd.DataFrame(state["skipped"]).to_csv(index=False))
    inputs = [p for p in (cfg.real, cfg.synthetic, cfg.val) if p]
    if ph.name == "finetune":
        inputs.append(str(Path(ph.init) / md.WEIGHTS))
    summary = {"phase": ph.name, "strategy": cfg.strategy, "best_epoch": state["best_epoch"],
               "epochs_run": state["epoch"], "steps": state["step"], "stop_reason": state["stop_reason"],
               "val_loss": val_loss, "val_auroc_mean": mean_auc, "n_auroc_labels": n_auc,
               "val_auroc": aurocs, "train_seconds": state["train_seconds"],
               "images_skipped": len(state["skipped"]), "data": sets["summary"], "device": str(device),
               "lr_schedule": state.get("lr_plan"),
               "final_lr": state["history"][-1]["lr"] if state["history"] else None}
    write_artifact_meta(ph.dir, cfg, inputs=inputs, extra={"summary": summary})
    (ph.dir / md.STATE).unlink()
    shutil.rmtree(ph.dir / "state", ignore_errors=True)


def _device(name: str):
    from rv2.models.device import resolve_device

    return resolve_device(name)
