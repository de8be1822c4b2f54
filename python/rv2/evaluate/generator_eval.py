"""`rv2 eval-generator`: the paper's checkpoint metrics (Supplementary Table 1)
for one generator or a series of training checkpoints.

For every checkpoint, each validation prompt is sampled with `n_seeds` seeds
(seed_for(prompt_id, k), the same for every checkpoint), and the images are
scored on three axes against the prompts' real images:

  alignment    disease AUROC per label (scores of the disease classifier against
               the prompt's labels) and their average; sex and race accuracy and
               age RMSE from the QC networks (Hispanic prompts are not checked by
               the 3-class race model and are left out of race accuracy)
  similarity   FID (Inception-v3; all synthetic images against all real ones), FID
               on the disease classifier's features, MS-SSIM and BioViL cosine of
               each synthetic image with its prompt's real image
  diversity    mean pairwise MS-SSIM and BioViL cosine among a prompt's images

Per-prompt metrics are averaged over prompts with bootstrap percentile CIs
(prompts resampled). The real images get the same alignment metrics, as the
paper's reference row.

Layout of `out/` (everything resumable; nothing is recomputed that is on disk):
  images/<checkpoint>/<prompt_id>/<k>.png   generated images (8-bit gray) + generator.json
  features/<checkpoint>/<net>.npy           features per net (synthetic and real)
  metrics/<checkpoint>.json                 metric values, each with the key it depends on
  table.csv, table.md, table.png            one row per checkpoint (+ the real row)
  selection.json, summary.json              the selected checkpoint; skipped metrics and why
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rv2.classify.data import manifest_root
from rv2.config import Config, hash_input, write_artifact_meta
from rv2.data.imageio import ImageReadError, center_crop, load_image, resize, to_uint8
from rv2.data.schema import CHEXPERT_LABELS
from rv2.errors import UserError
from rv2.evaluate.feature_nets import Unavailable, load_nets, resize_area
from rv2.evaluate.generator_metrics import (
    MSSSIM_WEIGHTS,
    bootstrap_mean_ci,
    cosine_rows,
    fid_from_features,
    mean_pairwise_cosine,
    ms_ssim,
    pairs,
)
from rv2.evaluate.metrics import auroc
from rv2.files import atomic_write_bytes, atomic_write_text, json_default
from rv2.generate.seeds import seed_for
from rv2.models.sd import load_components
from rv2.weights import MissingWeightsError

log = logging.getLogger("rv2.evaluate.generator_eval")

PAPER_LABELS: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Edema", "Pleural Effusion",
                                 "Pneumothorax")
METRICS: tuple[str, ...] = ("alignment", "demographics", "fid", "fid_xrv", "msssim_real",
                            "biovil_real", "msssim_div", "biovil_div")
# metric -> the net it needs (None: pixels only; "qc": the QC models)
NEEDS = {"alignment": "disease", "demographics": "qc", "fid": "inception", "fid_xrv": "disease",
         "msssim_real": None, "biovil_real": "biovil", "msssim_div": None, "biovil_div": "biovil"}
SELECTION_RULES = ("auroc_then_fid", "fid", "auroc")
REAL = "real"


class EvalGeneratorError(UserError):
    """Bad input to `rv2 eval-generator`; the message names the input and the fix."""


@dataclasses.dataclass
class EvalGeneratorConfig(Config):
    """Settings of `rv2 eval-generator` (defaults: the paper's protocol)."""

    VERSION = 1
    n_seeds: int = 4                 # images per prompt (intra-prompt diversity needs >= 2)
    n_prompts: int = 0               # first N validation prompts (0: all)
    split: str = "validate"          # rows of the prompts table used ("" : all rows)
    steps: int = 75
    guidance: float = 4.0
    base_seed: int = 0
    image_size: int = 0              # generated size (0: the generator's native size)
    batch_size: int = 8              # generation batch
    feature_batch: int = 32
    device: str = "auto"
    dtype: str = "auto"
    metrics: list[str] = dataclasses.field(default_factory=lambda: list(METRICS))
    inception: str = "fid"           # fid (TF FID Inception) | torchvision (ImageNet Inception-v3)
    eval_bundle: str = ""            # folder of stand-in nets (eval_bundle.json), e.g. the demo's
    weights_dirs: list[str] = dataclasses.field(default_factory=list)
    qc_weights_dir: str = ""         # QC bundle or folder of the real QC files
    biovil_path: str = ""            # BioViL file or folder (default: searched in the weight folders)
    xrv_trust_pickle: bool = False   # allow unpickling torchxrayvision's published DenseNet file
    alignment_labels: list[str] = dataclasses.field(default_factory=lambda: list(PAPER_LABELS))
    # a label the prompt's report does not mention (blank) counts as absent; uncertain
    # (-1) prompts are left out of that label's AUROC
    blank_as_negative: bool = True
    msssim_weights: list[float] = dataclasses.field(default_factory=lambda: list(MSSSIM_WEIGHTS))
    msssim_win: int = 11
    msssim_size: int = 0             # resize both images to this for MS-SSIM (0: generated size)
    n_boot: int = 1000
    seed: int = 0
    selection: str = "auroc_then_fid"
    auroc_tolerance: float = 0.01

    def validate(self) -> EvalGeneratorConfig:
        bad = [m for m in self.metrics if m not in METRICS]
        if bad:
            raise EvalGeneratorError(f"unknown metric(s) {bad}; known: {list(METRICS)}")
        if self.n_seeds < 1:
            raise EvalGeneratorError(f"n_seeds must be >= 1, got {self.n_seeds}")
        if self.selection not in SELECTION_RULES:
            raise EvalGeneratorError(f"selection must be one of {SELECTION_RULES}, got {self.selection!r}")
        if self.inception not in ("fid", "torchvision"):
            raise EvalGeneratorError(f"inception must be 'fid' or 'torchvision', got {self.inception!r}")
        return self


# ------------------------------------------------------------------ checkpoints

@dataclasses.dataclass
class Checkpoint:
    name: str
    path: Path
    step: int | None
    kind: str = "diffusers"      # diffusers folder | accelerate (train-generator state + base)
    base: Path | None = None     # accelerate: the pipeline folder holding VAE, tokenizer, configs

    @property
    def key(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.name)


def _step_of(path: Path) -> int | None:
    summary = path / "training_summary.json"
    if summary.is_file():
        try:
            return int(json.loads(summary.read_text())["steps"])
        except (KeyError, ValueError, TypeError, json.JSONDecodeError):
            pass
    m = re.search(r"(\d+)$", path.name)
    return int(m.group(1)) if m else None


def _weights_file(ckpt: Path) -> Path | None:
    return next((ckpt / n for n in ("model.safetensors", "pytorch_model.bin")
                 if (ckpt / n).is_file()), None)


def discover_checkpoints(generators: Sequence[str | Path] = (), checkpoints: str | Path | None = None,
                         base: str | Path | None = None) -> list[Checkpoint]:
    """Generator folders given one by one, and/or a folder of checkpoints: diffusers
    folders, or `rv2 train-generator`'s `checkpoints/step-N` states (weights in
    model.safetensors; VAE, tokenizer and configs from `base`, default the run's
    `pipeline/`). Ordered by training step."""
    out: list[Checkpoint] = []
    for g in generators:
        p = Path(g).expanduser()
        if not (p / "model_index.json").is_file():
            raise EvalGeneratorError(f"--generator {p}: not a diffusers generator folder (no "
                                     "model_index.json); for training checkpoints use --checkpoints")
        out.append(Checkpoint(p.name, p, _step_of(p)))
    if checkpoints:
        root = Path(checkpoints).expanduser()
        if not root.is_dir():
            raise EvalGeneratorError(f"--checkpoints {root}: no such folder")
        run = root
        if (root / "checkpoints").is_dir():
            root = root / "checkpoints"
        else:
            run = root.parent
        found = []
        for p in sorted(x for x in root.iterdir() if x.is_dir() and not x.name.startswith(".")):
            if (p / "model_index.json").is_file():
                found.append(Checkpoint(p.name, p, _step_of(p)))
            elif _weights_file(p) is not None:
                b = Path(base).expanduser() if base else run / "pipeline"
                if not (b / "model_index.json").is_file():
                    raise EvalGeneratorError(
                        f"{p} is a training state (model weights only); its VAE, tokenizer and "
                        f"configs come from a pipeline folder, but {b} is none. Pass --base "
                        "(the run's pipeline/ or the base model folder)")
                found.append(Checkpoint(p.name, p, _step_of(p), "accelerate", b))
        if not found:
            raise EvalGeneratorError(f"--checkpoints {root}: no generator folders (model_index.json) "
                                     "or training states (step-N/model.safetensors) inside")
        out += found
    if not out:
        raise EvalGeneratorError("nothing to evaluate: give --generator DIR (repeatable) or "
                                 "--checkpoints DIR")
    names = [c.key for c in out]
    dup = {n for n in names if names.count(n) > 1}
    for c in out:  # two folders with one name: tell them apart by their parents
        if c.key in dup:
            c.name = f"{c.path.parent.name}-{c.name}"
    out.sort(key=lambda c: (c.step is None, c.step or 0, c.name))
    return out


def fingerprint(ckpt: Checkpoint) -> str:
    target = _weights_file(ckpt.path) if ckpt.kind == "accelerate" else ckpt.path
    return hash_input(target)["sha256"][:16]


def load_checkpoint(ckpt: Checkpoint, dtype=None):
    """SD components of a checkpoint."""
    if ckpt.kind == "diffusers":
        return load_components(ckpt.path, torch_dtype=dtype)
    f = _weights_file(ckpt.path)
    if f.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(f))
    else:
        import torch

        state = torch.load(f, map_location="cpu", weights_only=True)
    parts = {name: {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
             for name in ("unet", "text_encoder")}
    absent = [name for name, sub in parts.items() if not sub]
    if absent:
        raise EvalGeneratorError(f"{f}: no {' or '.join(n + '.*' for n in absent)} weights; expected "
                                 "the UNet + text encoder state that `rv2 train-generator` saves")
    comps = load_components(ckpt.base, torch_dtype=dtype)
    for name, sub in parts.items():
        try:
            getattr(comps, name).load_state_dict(sub)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            raise EvalGeneratorError(f"{f}: the {name} weights do not fit the architecture in "
                                     f"{ckpt.base} ({' '.join(first[:2])[:300]})") from exc
    return comps


# ------------------------------------------------------------------ validation data

def load_validation(prompts: str | Path, root: str | Path | None, cfg: EvalGeneratorConfig):
    """The validation prompts table (with `path` to each real image) and its folder root."""
    import pandas as pd

    p = Path(prompts)
    if not p.is_file():
        raise EvalGeneratorError(f"--prompts {p}: no such file (a prompts table from `rv2 prompts "
                                 "build`, with a path column to each real image)")
    try:
        df = pd.read_parquet(p)
    except Exception as exc:
        raise EvalGeneratorError(f"--prompts {p}: not a readable Parquet file ({exc})") from exc
    need = ["prompt", "path", "sex", "race", "age"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise EvalGeneratorError(f"--prompts {p}: missing column(s) {missing}; expected the table of "
                                 "`rv2 prompts build` (prompt, path to the real image, sex, race, age, "
                                 "labels)")
    if cfg.split and "split" in df.columns:
        df = df[df["split"].astype(str) == cfg.split]
        if df.empty:
            raise EvalGeneratorError(f"--prompts {p}: no rows with split == {cfg.split!r}; use "
                                     "--set split=... (or split='' for all rows)")
    if "prompt_id" not in df.columns:
        df = df.assign(prompt_id=[f"row{i}" for i in range(len(df))])
    df = df.assign(prompt_id=df["prompt_id"].astype(str)).drop_duplicates("prompt_id")
    if cfg.n_prompts:
        df = df.iloc[: cfg.n_prompts]
    for lab in CHEXPERT_LABELS:
        if lab not in df.columns:
            df[lab] = np.nan
    return df.reset_index(drop=True), manifest_root(p, str(root) if root else None)


def load_real_images(df, root: Path, size: int) -> np.ndarray:
    """The real images, center-cropped square and resized to `size`: (P, size, size) uint8."""
    out = np.empty((len(df), size, size), np.uint8)
    for i, rel in enumerate(df["path"].astype(str)):
        path = root / rel
        try:
            img = load_image(path)
        except ImageReadError as exc:
            raise EvalGeneratorError(f"real image of prompt {df['prompt_id'].iloc[i]}: {exc} "
                                     f"(paths are relative to {root}; set --root)") from exc
        s = min(img.shape)
        out[i] = to_uint8(resize(center_crop(img, s), size))
    return out


# ------------------------------------------------------------------ generation cache

def _png_bytes(u8: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="PNG")
    return buf.getvalue()


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L"), np.uint8)


class ImageCache:
    """Generated images of one checkpoint, one PNG per (prompt, seed index)."""

    def __init__(self, out: Path, ckpt: Checkpoint, sampling: dict):
        self.dir = out / "images" / ckpt.key
        self.ckpt = ckpt
        self.sampling = sampling

    def path(self, pid: str, k: int) -> Path:
        return self.dir / pid / f"{k}.png"

    def check(self) -> None:
        """The folder holds images of this checkpoint and these sampling settings, or none."""
        meta = self.dir / "generator.json"
        want = {"checkpoint": str(self.ckpt.path), "fingerprint": fingerprint(self.ckpt),
                "sampling": self.sampling}
        if meta.is_file():
            have = json.loads(meta.read_text())
            diff = [k for k in ("fingerprint", "sampling") if have.get(k) != want[k]]
            if diff:
                raise EvalGeneratorError(
                    f"{self.dir} holds images of another {' and '.join(diff)} than this run "
                    f"({self.ckpt.path}); use another --out, or delete that folder to regenerate")
        else:
            atomic_write_text(meta, json.dumps(want, indent=2))

    def missing(self, pids: Sequence[str], n_seeds: int) -> list[tuple[str, int]]:
        return [(p, k) for p in pids for k in range(n_seeds) if not self.path(p, k).is_file()]

    def load(self, pids: Sequence[str], n_seeds: int) -> np.ndarray:
        return np.stack([np.stack([_read_png(self.path(p, k)) for k in range(n_seeds)])
                         for p in pids])


def generate_missing(cache: ImageCache, df, todo: list[tuple[str, int]], cfg: EvalGeneratorConfig,
                     progress: bool = True) -> dict:
    """Sample the missing (prompt, seed index) images with the generation API and cache them."""
    import torch
    from tqdm.auto import tqdm

    from rv2.generate.eager import eager_stages
    from rv2.generate.sampler import denoise, initial_latents, latent_shape, to_gray
    from rv2.models.device import resolve_device, resolve_dtype

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    t0 = time.perf_counter()
    st = eager_stages(load_checkpoint(cache.ckpt, dtype), device, dtype)
    t_load = time.perf_counter() - t0
    size = cfg.image_size or None
    shape = latent_shape(st.denoiser, st.decoder, size, size)
    prompt_of = dict(zip(df["prompt_id"], df["prompt"].astype(str)))
    uncond = st.text_encoder.encode([""]) if cfg.guidance > 1.0 else None
    bar = tqdm(total=len(todo), desc=f"generate {cache.ckpt.name}", unit="img", disable=not progress)
    t1 = time.perf_counter()
    for i in range(0, len(todo), cfg.batch_size):
        batch = todo[i:i + cfg.batch_size]
        cond = st.text_encoder.encode([prompt_of[p] for p, _ in batch])
        seeds = [seed_for(p, k, cfg.base_seed) for p, k in batch]
        lat = initial_latents(seeds, shape, device, dtype)
        lat = denoise(st.denoiser, st.scheduler, cond, uncond, lat, cfg.steps, cfg.guidance)
        img = to_gray(st.decoder.decode(lat))
        arr = img[:, 0].detach().to("cpu", torch.float32).numpy()
        for (p, k), a in zip(batch, arr):
            atomic_write_bytes(cache.path(p, k), _png_bytes(to_uint8(np.ascontiguousarray(a))))
        bar.update(len(batch))
    bar.close()
    wall = time.perf_counter() - t1
    return {"images": len(todo), "load_s": round(t_load, 2), "generate_s": round(wall, 2),
            "images_per_s": round(len(todo) / wall, 3) if wall > 0 else None}


# ------------------------------------------------------------------ metrics

def _to_float(u8: np.ndarray):
    """(N, H, W) uint8 -> N x 1 x H x W float tensor in [0, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(u8)).float().div_(255).unsqueeze(1)


def _resize_for_msssim(x, size: int):
    return resize_area(x, size) if size and x.shape[-1] != size else x


class Scorer:
    """Computes (and caches) features and metrics of one image set (a checkpoint or the real row)."""

    def __init__(self, out: Path, key: str, nets: dict, cfg: EvalGeneratorConfig, df,
                 images: np.ndarray, real: np.ndarray, real_feats: dict | None, image_key: str):
        self.out, self.key, self.nets, self.cfg, self.df = out, key, nets, cfg, df
        self.images = images            # (P, K, S, S) uint8
        self.real = real                # (P, S, S) uint8
        self.real_feats = real_feats    # role -> (P, D) features of the real images
        self.image_key = image_key      # what the images depend on (checkpoint + sampling)
        self.metrics_path = out / "metrics" / f"{key}.json"
        self.saved = json.loads(self.metrics_path.read_text()) if self.metrics_path.is_file() else {}

    # features of the flattened (P*K) images, cached on disk per net
    def features(self, role: str) -> np.ndarray:
        net = self.nets[role]
        tag = hashlib.sha256(f"{net.model_id}\0{self.image_key}".encode()).hexdigest()[:12]
        f = self.out / "features" / self.key / f"{role}-{tag}.npy"
        if f.is_file():
            return np.load(f)
        P, K = self.images.shape[:2]
        flat = self.images.reshape(P * K, *self.images.shape[2:])
        feats = np.concatenate([net.features(_to_float(flat[i:i + 256]), self.cfg.feature_batch)
                                for i in range(0, len(flat), 256)])
        f.parent.mkdir(parents=True, exist_ok=True)
        import io

        buf = io.BytesIO()
        np.save(buf, feats)
        atomic_write_bytes(f, buf.getvalue())
        return feats

    def dep(self, metric: str) -> str:
        c = self.cfg
        need = NEEDS[metric]
        net_id = (self.nets[need].model_id if need and need in self.nets and self.nets[need] else "")
        params: dict[str, Any] = {"images": self.image_key, "net": net_id}
        if metric == "alignment":
            params.update(labels=list(c.alignment_labels), blank=c.blank_as_negative)
        if metric.startswith("msssim"):
            params.update(w=list(c.msssim_weights), win=c.msssim_win, size=c.msssim_size)
        if metric.endswith(("_real", "_div")):
            params.update(n_boot=c.n_boot, seed=c.seed)
        return json.dumps(params, sort_keys=True)

    def compute(self, metric: str) -> dict:
        d = self.dep(metric)
        if metric in self.saved and self.saved[metric].get("dep") == d:
            return self.saved[metric]
        t0 = time.perf_counter()
        val = getattr(self, "_" + metric)()
        val.update(dep=d, seconds=round(time.perf_counter() - t0, 3))
        self.saved[metric] = val
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.metrics_path, json.dumps(self.saved, indent=1, default=json_default))
        return val

    # -- alignment
    def _alignment(self) -> dict:
        net = self.nets["disease"]
        P, K = self.images.shape[:2]
        flat = self.images.reshape(P * K, *self.images.shape[2:])
        probs = np.concatenate([net.predict(_to_float(flat[i:i + 256]), self.cfg.feature_batch)
                                for i in range(0, len(flat), 256)])
        out: dict[str, Any] = {"auroc": {}}
        for lab in self.cfg.alignment_labels:
            if lab not in net.labels:
                out["auroc"][lab] = None
                continue
            y = np.repeat(self.df[lab].to_numpy(np.float64), K)
            if self.cfg.blank_as_negative:
                y = np.where(np.isnan(y), 0.0, y)
            v = auroc(y, probs[:, net.labels.index(lab)].astype(np.float64))
            out["auroc"][lab] = v if math.isfinite(v) else None
        vals = [v for v in out["auroc"].values() if v is not None]
        out["auroc_avg"] = float(np.mean(vals)) if vals else None
        out["n_labels"] = len(vals)
        return out

    def _demographics(self) -> dict:
        from rv2.models.qc_networks import RACE_CLASSES

        qc = self.nets["qc"]
        P, K = self.images.shape[:2]
        flat = self.images.reshape(P * K, *self.images.shape[2:])
        preds = [qc.predict(_to_float(flat[i:i + 256])) for i in range(0, len(flat), 256)]
        pf = np.concatenate([p["p_female"] for p in preds])
        rp = np.concatenate([p["race_probs"] for p in preds])
        age = np.concatenate([p["age"] for p in preds]).astype(np.float64)
        sex = np.repeat(self.df["sex"].astype(str).to_numpy(), K)
        race = np.repeat(self.df["race"].astype(str).to_numpy(), K)
        true_age = np.repeat(self.df["age"].to_numpy(np.float64), K)
        pred_sex = np.where(pf >= 0.5, "F", "M")
        checkable = np.isin(race, RACE_CLASSES)
        pred_race = np.asarray(RACE_CLASSES)[rp.argmax(axis=1)]
        ok_age = np.isfinite(true_age)
        return {"sex_acc": float((pred_sex == sex).mean()),
                "race_acc": float((pred_race[checkable] == race[checkable]).mean())
                if checkable.any() else None,
                "race_checked": int(checkable.sum()),
                "age_rmse": float(np.sqrt(np.mean((age[ok_age] - true_age[ok_age]) ** 2)))
                if ok_age.any() else None}

    # -- similarity
    def _fid_of(self, role: str) -> dict:
        syn = self.features(role)
        return {"fid": fid_from_features(syn, self.real_feats[role]), "n_synthetic": len(syn),
                "n_real": len(self.real_feats[role]), "dim": int(syn.shape[1])}

    def _fid(self) -> dict:
        return self._fid_of("inception")

    def _fid_xrv(self) -> dict:
        return self._fid_of("disease")

    def _per_prompt(self, values: np.ndarray) -> dict:
        ci = bootstrap_mean_ci(values, self.cfg.n_boot, self.cfg.seed)
        return {**ci.to_dict(), "per_prompt": [None if not math.isfinite(v) else float(v)
                                               for v in values]}

    def _msssim_pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(a), 16):  # small chunks: float64 maps of big batches thrash caches
            x = _resize_for_msssim(_to_float(a[i:i + 16]), self.cfg.msssim_size)
            y = _resize_for_msssim(_to_float(b[i:i + 16]), self.cfg.msssim_size)
            out.append(ms_ssim(x, y, weights=self.cfg.msssim_weights,
                               win_size=self.cfg.msssim_win).numpy())
        return np.concatenate(out)

    def _msssim_real(self) -> dict:
        P, K = self.images.shape[:2]
        a = self.images.reshape(P * K, *self.images.shape[2:])
        b = np.repeat(self.real, K, axis=0)
        return self._per_prompt(self._msssim_pairs(a, b).reshape(P, K).mean(axis=1))

    def _biovil_real(self) -> dict:
        P, K = self.images.shape[:2]
        syn = self.features("biovil")
        real = np.repeat(self.real_feats["biovil"], K, axis=0)
        return self._per_prompt(cosine_rows(syn, real).reshape(P, K).mean(axis=1))

    def _msssim_div(self) -> dict:
        P, K = self.images.shape[:2]
        if K < 2:
            raise EvalGeneratorError("intra-prompt diversity needs n_seeds >= 2")
        i, j = pairs(K)
        a = self.images[:, i].reshape(-1, *self.images.shape[2:])
        b = self.images[:, j].reshape(-1, *self.images.shape[2:])
        return self._per_prompt(self._msssim_pairs(a, b).reshape(P, len(i)).mean(axis=1))

    def _biovil_div(self) -> dict:
        P, K = self.images.shape[:2]
        if K < 2:
            raise EvalGeneratorError("intra-prompt diversity needs n_seeds >= 2")
        return self._per_prompt(mean_pairwise_cosine(self.features("biovil").reshape(P, K, -1)))


# ------------------------------------------------------------------ table and selection

def table_columns(cfg: EvalGeneratorConfig) -> list[str]:
    return (["checkpoint", "step"] + [f"auroc_{lab}" for lab in cfg.alignment_labels]
            + ["auroc_avg", "sex_acc", "race_acc", "age_rmse", "fid", "fid_xrv"]
            + [f"{m}{s}" for m in ("msssim_real", "biovil_real", "msssim_div", "biovil_div")
               for s in ("", "_low", "_high")])


def table_row(name: str, step, res: dict, cfg: EvalGeneratorConfig) -> dict:
    row: dict[str, Any] = {c: None for c in table_columns(cfg)}
    row.update(checkpoint=name, step=step)
    if "alignment" in res:
        for lab, v in res["alignment"]["auroc"].items():
            row[f"auroc_{lab}"] = v
        row["auroc_avg"] = res["alignment"]["auroc_avg"]
    if "demographics" in res:
        row.update({k: res["demographics"][k] for k in ("sex_acc", "race_acc", "age_rmse")})
    for m in ("fid", "fid_xrv"):
        if m in res:
            row[m] = res[m]["fid"]
    for m in ("msssim_real", "biovil_real", "msssim_div", "biovil_div"):
        if m in res:
            row[m], row[f"{m}_low"], row[f"{m}_high"] = (res[m]["mean"], res[m]["low"],
                                                          res[m]["high"])
    return row


def select_checkpoint(rows: Sequence[dict], rule: str = "auroc_then_fid",
                      tolerance: float = 0.01) -> dict:
    """The checkpoint a rule picks (the real row never competes).

    auroc_then_fid: among checkpoints whose average disease AUROC is within
      `tolerance` of the best, the lowest FID (the paper's choice: the best
      alignment, then the most realistic). Falls back to FID alone or AUROC alone
      when one of them was not computed.
    fid: the lowest FID.  auroc: the highest average AUROC (ties: lower FID)."""
    cands = [r for r in rows if r["checkpoint"] != REAL]
    if not cands:
        raise EvalGeneratorError("no checkpoint rows to select from")

    def has(r, k):
        return r.get(k) is not None and math.isfinite(r[k])

    have_auc = [r for r in cands if has(r, "auroc_avg")]
    have_fid = [r for r in cands if has(r, "fid")]
    if rule == "auroc_then_fid" and have_auc and have_fid:
        best = max(r["auroc_avg"] for r in have_auc)
        pool = [r for r in have_auc if r["auroc_avg"] >= best - tolerance - 1e-12 and has(r, "fid")]
        pool = pool or have_fid
        pick = min(pool, key=lambda r: r["fid"])
        why = (f"highest average AUROC {best:.3f}; of the {len(pool)} checkpoint(s) within "
               f"{tolerance} of it, the lowest FID ({pick['fid']:.2f})")
    elif rule in ("auroc_then_fid", "fid") and have_fid:
        pick = min(have_fid, key=lambda r: r["fid"])
        why = f"lowest FID ({pick['fid']:.2f})" + ("" if rule == "fid" else "; AUROC not computed")
    elif have_auc:
        pick = max(have_auc, key=lambda r: (r["auroc_avg"], -(r["fid"] if has(r, "fid") else 0)))
        why = f"highest average AUROC ({pick['auroc_avg']:.3f})" + \
            ("" if rule == "auroc" else "; FID not computed")
    else:
        raise EvalGeneratorError(f"selection rule {rule!r} needs FID or disease AUROC, and neither "
                                 "was computed (see the skipped metrics)")
    return {"rule": rule, "tolerance": tolerance, "checkpoint": pick["checkpoint"],
            "step": pick["step"], "reason": why}


def _fmt(v, nd=2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{nd}f}"


def markdown_table(rows: Sequence[dict], cfg: EvalGeneratorConfig, selection: dict | None,
                   skipped: dict[str, str]) -> str:
    labs = list(cfg.alignment_labels)
    head = (["Checkpoint (step)"] + labs + ["Average AUROC", "Sex Acc.", "Race Acc.", "Age RMSE",
            "FID", "FID (xrv)", "MS-SSIM", "BioViL", "MS-SSIM", "BioViL"])
    note = (f"Text prompt alignment: columns 2-{len(labs) + 5}; real-synthetic similarity: FID "
            "to BioViL; intra-prompt diversity: the last two columns. MS-SSIM and BioViL are "
            f"means over prompts with 95% bootstrap CIs ({cfg.n_boot} resamples of prompts).")
    lines = ["# Generator checkpoints (Supplementary Table 1 layout)", "", note, "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def ci(r, m):
        if r.get(m) is None:
            return "-"
        s = _fmt(r[m])
        if r.get(f"{m}_low") is not None and math.isfinite(r[f"{m}_low"]):
            s += f" [{_fmt(r[f'{m}_low'])}, {_fmt(r[f'{m}_high'])}]"
        return s

    for r in rows:
        name = "real data" if r["checkpoint"] == REAL else r["checkpoint"]
        if r["step"] is not None and r["checkpoint"] != REAL:
            name += f" ({r['step']})"
        if selection and r["checkpoint"] == selection["checkpoint"]:
            name = f"**{name}**"
        cells = ([name] + [_fmt(r.get(f"auroc_{lab}")) for lab in labs]
                 + [_fmt(r["auroc_avg"]), _fmt(r["sex_acc"]), _fmt(r["race_acc"]),
                    _fmt(r["age_rmse"], 1), _fmt(r["fid"], 1), _fmt(r["fid_xrv"], 1)]
                 + [ci(r, m) for m in ("msssim_real", "biovil_real", "msssim_div", "biovil_div")])
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if selection and selection["checkpoint"] is not None:
        lines += [(f"Selected: **{selection['checkpoint']}** (rule `{selection['rule']}`: "
                   f"{selection['reason']})."), ""]
    elif selection:
        lines += [f"No checkpoint selected: {selection['reason']}", ""]
    if skipped:
        lines += ["Skipped:", ""] + [f"- {k}: {v}" for k, v in skipped.items()] + [""]
    return "\n".join(lines)


def plot_table(rows: Sequence[dict], path: Path, selection: dict | None) -> Path | None:
    """Each computed metric against training step (or checkpoint order), the real row dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ck = [r for r in rows if r["checkpoint"] != REAL]
    real = next((r for r in rows if r["checkpoint"] == REAL), None)
    metrics = [(m, t) for m, t in (("auroc_avg", "average AUROC"), ("sex_acc", "sex accuracy"),
                                   ("race_acc", "race accuracy"), ("age_rmse", "age RMSE"),
                                   ("fid", "FID"), ("fid_xrv", "FID (xrv)"),
                                   ("msssim_real", "MS-SSIM real-syn"),
                                   ("biovil_real", "BioViL real-syn"),
                                   ("msssim_div", "MS-SSIM intra-prompt"),
                                   ("biovil_div", "BioViL intra-prompt"))
               if any(r.get(m) is not None for r in ck)]
    if not metrics or not ck:
        return None
    use_steps = all(r["step"] is not None for r in ck)
    xs = [r["step"] if use_steps else i for i, r in enumerate(ck)]
    n = len(metrics)
    cols = min(4, n)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(3.4 * cols, 2.6 * ((n + cols - 1) // cols)),
                             squeeze=False)
    for ax, (m, title) in zip(axes.flat, metrics):
        ys = [np.nan if r.get(m) is None else r[m] for r in ck]
        ax.plot(xs, ys, "o-", color="C0")
        if ck[0].get(f"{m}_low") is not None:
            lo = [np.nan if r.get(f"{m}_low") is None else r[f"{m}_low"] for r in ck]
            hi = [np.nan if r.get(f"{m}_high") is None else r[f"{m}_high"] for r in ck]
            ax.fill_between(xs, lo, hi, color="C0", alpha=0.2)
        if real is not None and real.get(m) is not None and not m.endswith("_div"):
            ax.axhline(real[m], ls="--", color="gray", lw=1, label="real data")
        if selection:
            for x, r in zip(xs, ck):
                if r["checkpoint"] == selection["checkpoint"]:
                    ax.axvline(x, color="C3", lw=1, alpha=0.6)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        if not use_steps:
            ax.set_xticks(xs, [r["checkpoint"] for r in ck], rotation=30, fontsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.supxlabel("training step" if use_steps else "checkpoint", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------ the run

def _roles_needed(metrics: Sequence[str]) -> list[str]:
    return sorted({NEEDS[m] for m in metrics if NEEDS[m] and NEEDS[m] != "qc"})


def load_scoring_nets(cfg: EvalGeneratorConfig, device) -> tuple[dict, dict[str, str]]:
    """Nets for the configured metrics, and {metric: why skipped} for those that cannot run."""
    nets: dict[str, Any] = load_nets(_roles_needed(cfg.metrics), bundle=cfg.eval_bundle or None,
                                     dirs=list(cfg.weights_dirs), inception=cfg.inception,
                                     biovil_path=cfg.biovil_path or None,
                                     xrv_trust_pickle=cfg.xrv_trust_pickle, device=device)
    if "demographics" in cfg.metrics:
        try:
            from rv2.models.qc_networks import load_qc_models

            nets["qc"] = load_qc_models(cfg.qc_weights_dir or None, device)
        except MissingWeightsError as exc:
            nets["qc"] = Unavailable("qc", f"sex/race accuracy and age RMSE (QC networks) "
                                           f"skipped: {exc}")
        except (ValueError, OSError) as exc:
            nets["qc"] = Unavailable("qc", f"sex/race accuracy and age RMSE (QC networks) "
                                           f"skipped: {exc}")
    skipped = {m: nets[NEEDS[m]].reason for m in cfg.metrics
               if NEEDS[m] and not nets.get(NEEDS[m])}
    if cfg.n_seeds < 2:
        for m in ("msssim_div", "biovil_div"):
            if m in cfg.metrics:
                skipped[m] = "intra-prompt diversity needs n_seeds >= 2"
    return nets, skipped


def evaluate_generators(prompts: str | Path, out: str | Path, *, generators: Sequence = (),
                        checkpoints: str | Path | None = None, base: str | Path | None = None,
                        root: str | Path | None = None, cfg: EvalGeneratorConfig | None = None,
                        progress: bool = True) -> dict:
    """Run (or resume) the evaluation; returns the summary (also in out/summary.json)."""
    import pandas as pd
    import torch

    from rv2.models.device import resolve_device

    cfg = (cfg or EvalGeneratorConfig()).validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpts = discover_checkpoints(generators, checkpoints, base)
    df, img_root = load_validation(prompts, root, cfg)
    device = resolve_device(cfg.device)
    t_start = time.perf_counter()

    # the generated size: explicit, else the first checkpoint's native size
    size = cfg.image_size
    if not size:
        first = ckpts[0].base if ckpts[0].kind == "accelerate" else ckpts[0].path
        ucfg = json.loads((first / "unet" / "config.json").read_text())
        vcfg = json.loads((first / "vae" / "config.json").read_text())
        size = int(ucfg["sample_size"]) * 2 ** (len(vcfg["block_out_channels"]) - 1)
    cfg = dataclasses.replace(cfg, image_size=size)
    cfg.save(out / "eval_config.yaml")
    sampling = {"steps": cfg.steps, "guidance": cfg.guidance, "base_seed": cfg.base_seed,
                "image_size": size, "dtype": cfg.dtype}

    nets, skipped = load_scoring_nets(cfg, device)
    metrics = [m for m in cfg.metrics if m not in skipped]
    pids = df["prompt_id"].tolist()
    real = load_real_images(df, img_root, size)
    # what a set of images is: its source, the prompts (and their order) and the size
    prompt_set = hashlib.sha256("\0".join(pids).encode()).hexdigest()[:16]
    real_key = f"real:{hash_input(Path(prompts))['sha256'][:16]}:{prompt_set}:{size}"
    # the real row: the alignment metrics of the real images (the classifiers' own error),
    # and the similarity metrics of real against itself (0 / 1 by definition, computed)
    real_feats: dict[str, np.ndarray] = {}
    rs = Scorer(out, REAL, nets, cfg, df, real[:, None], real, real_feats, real_key)
    with torch.inference_mode():
        for role in sorted({NEEDS[m] for m in metrics if NEEDS[m] not in (None, "qc")}):
            real_feats[role] = rs.features(role)  # cached on disk like every feature set

    results: dict[str, dict] = {}
    gen_stats: dict[str, dict] = {}
    timings: dict[str, float] = {}
    results[REAL] = {m: rs.compute(m) for m in metrics if not m.endswith("_div")}
    for ck in ckpts:
        cache = ImageCache(out, ck, sampling)
        cache.check()
        todo = cache.missing(pids, cfg.n_seeds)
        if todo:
            gen_stats[ck.name] = generate_missing(cache, df, todo, cfg, progress)
        t0 = time.perf_counter()
        images = cache.load(pids, cfg.n_seeds)
        image_key = (f"{ck.key}:{fingerprint(ck)}:{prompt_set}:{cfg.n_seeds}:"
                     f"{json.dumps(sampling, sort_keys=True)}")
        sc = Scorer(out, ck.key, nets, cfg, df, images, real, real_feats, image_key)
        results[ck.name] = {m: sc.compute(m) for m in metrics}
        timings[ck.name] = round(time.perf_counter() - t0, 2)

    rows = [table_row(REAL, None, results[REAL], cfg)] + [
        table_row(c.name, c.step, results[c.name], cfg) for c in ckpts]
    try:
        selection = select_checkpoint(rows, cfg.selection, cfg.auroc_tolerance)
    except EvalGeneratorError as exc:  # the table is still worth writing
        selection = {"rule": cfg.selection, "checkpoint": None, "step": None, "reason": str(exc)}
    pd.DataFrame(rows, columns=table_columns(cfg)).to_csv(out / "table.csv", index=False)
    atomic_write_text(out / "table.md", markdown_table(rows, cfg, selection, skipped))
    fig = plot_table(rows, out / "table.png", selection)
    atomic_write_text(out / "selection.json", json.dumps(selection, indent=2))
    summary = {"checkpoints": [{"name": c.name, "step": c.step, "path": str(c.path), "kind": c.kind}
                               for c in ckpts],
               "prompts": len(df), "n_seeds": cfg.n_seeds, "image_size": size,
               "metrics": metrics, "skipped": skipped, "selection": selection,
               "nets": {k: getattr(v, "model_id", None) for k, v in nets.items() if v},
               "generation": gen_stats, "metric_seconds": timings,
               "wall_s": round(time.perf_counter() - t_start, 2),
               "table_csv": str(out / "table.csv"), "table_md": str(out / "table.md"),
               "figure": str(fig) if fig else None}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=json_default))
    write_artifact_meta(out / "table.csv", cfg, inputs=[prompts],
                        extra={"selection": selection, "skipped": skipped})
    return summary
