"""A torch Dataset over a manifest, for classifier training and inference.

Each item is a dict:
  image   float32 [3, S, S]: centre crop to square, resize to S (antialias),
          [0,1], (x - mean) / std, grayscale replicated to 3 channels
  target  float32 [L]: label values after the label policy
  mask    float32 [L]: 1 where the label enters the loss, 0 where it is masked
  index   row number in the manifest; image_id; sex, race, age_bin ("" if
          missing), age (NaN if missing)
  ok      False when the image could not be read; `error` then says why and
          the image is zeros with an all-zero mask. The caller decides whether
          that is fatal (training by default) or reported and skipped (predict).

Label values in a manifest are 1, 0, -1 (uncertain) or NaN (not mentioned).
`label_policy` (rv2.data.label_policy) maps uncertain to 0 | 1 | ignore (masked)
and blank to 0 | ignore; default uncertain=0,blank=0.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from rv2.data import imageio
from rv2.data.dali import DaliDecoder
from rv2.data.imageio import ImageReadError, load_image
from rv2.data.label_policy import LabelPolicy, from_legacy
from rv2.data.schema import CHEXPERT_LABELS, UNCERTAIN_POLICIES
from rv2.errors import UserError

UNKNOWN_POLICIES = ("zeros", "ignore")

try:  # torch is a dependency, but keep `import rv2.data` light for tools that only read tables
    import torch
    from torch.utils.data import Dataset
except ImportError:  # pragma: no cover
    torch = None
    Dataset = object


def label_targets(values: np.ndarray, uncertain_policy: str = "ignore",
                  unknown_policy: str = "zeros") -> tuple[np.ndarray, np.ndarray]:
    """(target, mask) float32 arrays from raw label values (1, 0, -1, NaN), older
    spelling of LabelPolicy.targets (uncertain ignore|zeros|ones, unknown zeros|ignore)."""
    if uncertain_policy not in UNCERTAIN_POLICIES:
        raise UserError(f"uncertain_policy must be one of {UNCERTAIN_POLICIES}, got {uncertain_policy!r}")
    if unknown_policy not in UNKNOWN_POLICIES:
        raise UserError(f"unknown_policy must be one of {UNKNOWN_POLICIES}, got {unknown_policy!r}")
    return from_legacy(uncertain_policy, unknown_policy).targets(values)


def resolve_path(root: Path, rel: str) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else root / p


def preprocess(img: np.ndarray, size: int) -> np.ndarray:
    """Float HxW [0,1] -> centre-cropped square, resized to size x size (antialias)."""

    img = imageio.center_crop(img, min(img.shape[0], img.shape[1]))
    if img.shape[0] != size or img.shape[1] != size:
        img = imageio.resize(img, size)
    return np.ascontiguousarray(img, dtype=np.float32)


DECODERS = ("pil", "dali")


class ManifestDataset(Dataset):
    """Images and labels of a manifest (a DataFrame; `path` relative to `root`)."""

    def __init__(self, manifest: pd.DataFrame, root: str | os.PathLike, *, image_size: int = 224,
                 labels: Sequence[str] = CHEXPERT_LABELS,
                 label_policy: "LabelPolicy | str | None" = None, mean: float = 0.0, std: float = 1.0,
                 require_labels: bool = True, cache: bool = False, name: str = "manifest",
                 decoder: str = "pil", dali_device_id: int | None = None):
        missing = [c for c in ("image_id", "path") if c not in manifest.columns]
        if require_labels:
            missing += [c for c in labels if c not in manifest.columns]
        if missing:
            raise UserError(f"{name}: missing column(s) {missing}; a manifest made by "
                             "`rv2 data index` or `rv2 generate` has them")
        if std <= 0 or not math.isfinite(std):
            raise UserError(f"normalization std must be a positive number, got {std}")
        if decoder not in DECODERS:
            raise UserError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        self.name = name
        # "dali": DataLoader batches are decoded in one DALI call (__getitems__);
        # each worker process builds its own decoder on first use.
        self.decoder = decoder
        self.dali_device_id = dali_device_id
        self._dali = None
        self.root = Path(root)
        self.image_size = int(image_size)
        self.labels = tuple(labels)
        self.mean, self.std = float(mean), float(std)
        self.df = manifest.reset_index(drop=True)
        self.paths = [str(p) for p in self.df["path"]]
        self.image_ids = [str(x) for x in self.df["image_id"]]
        n = len(self.df)
        self.label_policy = LabelPolicy.parse(label_policy)
        if require_labels:
            raw = self.df[list(self.labels)].to_numpy(dtype=np.float64, na_value=np.nan)
            self.target, self.mask = self.label_policy.targets(raw)
        else:
            self.target = np.zeros((n, len(self.labels)), np.float32)
            self.mask = np.zeros((n, len(self.labels)), np.float32)
        self.sex = _strings(self.df, "sex")
        self.race = _strings(self.df, "race")
        self.age_bin = _strings(self.df, "age_bin")
        self.age = (pd.to_numeric(self.df["age"], errors="coerce").to_numpy(np.float64, na_value=np.nan)
                    if "age" in self.df.columns else np.full(n, np.nan))
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.df)

    def path(self, i: int) -> Path:
        return resolve_path(self.root, self.paths[i])

    def pixels(self, i: int) -> np.ndarray:
        """The preprocessed [0,1] image (S x S); raises ImageReadError for a bad file."""
        if self._cache is not None and i in self._cache:
            return self._cache[i]

        img = preprocess(load_image(self.path(i)), self.image_size)
        if self._cache is not None:
            self._cache[i] = img  # float32: a cached image must equal a freshly decoded one
        return img

    def __getitem__(self, i: int) -> dict:
        error = ""
        try:
            img = self.pixels(i)
        except (ImageReadError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            img = None
        return self._item(i, img, error)

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        """A batch of items; with decoder="dali" the uncached images are decoded in one call."""
        if self.decoder != "dali":
            return [self[i] for i in indices]

        todo = [i for i in indices if self._cache is None or i not in self._cache]
        decoded, errors = {}, {}
        if todo:
            if self._dali is None:
                self._dali = DaliDecoder(self.image_size, square="crop",
                                         device_id=self.dali_device_id, batch_size=len(todo))
            imgs = self._dali.decode_files([self.path(i) for i in todo], on_error="none")
            for k, i in enumerate(todo):
                if imgs[k] is None:
                    exc = self._dali.errors[k]
                    errors[i] = f"{type(exc).__name__}: {exc}"
                else:
                    decoded[i] = np.ascontiguousarray(imgs[k], dtype=np.float32)
                    if self._cache is not None:
                        self._cache[i] = decoded[i]
        out = []
        for i in indices:
            img = self._cache[i] if (self._cache is not None and i in self._cache) else decoded.get(i)
            out.append(self._item(i, img, errors.get(i, "")))
        return out

    def _item(self, i: int, img: np.ndarray | None, error: str) -> dict:
        ok = img is not None
        if ok:
            x = torch.from_numpy((img - self.mean) / self.std).unsqueeze(0).expand(3, -1, -1)
            mask = torch.from_numpy(self.mask[i])
        else:
            x = torch.zeros(3, self.image_size, self.image_size)
            mask = torch.zeros(len(self.labels))
        return {"image": x.contiguous(), "target": torch.from_numpy(self.target[i]), "mask": mask,
                "index": i, "image_id": self.image_ids[i], "ok": ok, "error": error,
                "sex": self.sex[i], "race": self.race[i], "age_bin": self.age_bin[i],
                "age": float(self.age[i])}


def _strings(df: pd.DataFrame, col: str) -> list[str]:
    if col not in df.columns:
        return [""] * len(df)
    return ["" if (v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))) else str(v)
            for v in df[col].tolist()]


def pixel_stats(ds: ManifestDataset, max_images: int = 2000, seed: int = 0,
                progress: bool = True) -> dict:
    """Mean and std of preprocessed pixel values over a seeded sample of images
    (all of them when there are at most `max_images`); unreadable ones are skipped."""
    from tqdm.auto import tqdm

    n = len(ds)
    idx = np.arange(n) if n <= max_images else np.sort(
        np.random.default_rng(seed).choice(n, size=max_images, replace=False))
    total = total_sq = 0.0
    count = 0
    used = 0
    for i in tqdm(idx, desc=f"normalization ({ds.name})", disable=not progress, leave=False):
        try:
            img = ds.pixels(int(i)).astype(np.float64)
        except (ImageReadError, OSError):
            continue
        total += img.sum()
        total_sq += np.square(img).sum()
        count += img.size
        used += 1
    if count == 0:
        raise UserError(f"{ds.name}: no readable image to compute the normalization from")
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean * mean, 0.0))
    if std < 1e-6:
        std = 1.0  # constant images: leave the scale alone rather than divide by ~0
    return {"mean": mean, "std": std, "n_images": used, "image_size": ds.image_size}
