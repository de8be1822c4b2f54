"""A trained disease classifier, ready to answer: the one entry point for
`rv2 predict`, the server and the engines.

    p = Predictor.load("runs/clf")                  # eager torch on the best device
    probs = p.predict_bytes([png_bytes, dicom_bytes])  # (N, L) probabilities
    p.positive_labels(probs)                        # labels at or above their thresholds

The Predictor owns the preprocessing recorded with the model (model_config.json:
image size, normalisation, channels), so every caller feeds the network the
same pixels training did. The network itself is a `Backend`: eager torch here,
a compiled engine from `rv2.engines` when one is given. It never imports the
trainer.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Protocol, Sequence

import numpy as np

from rv2.classify import model_dir as md
from rv2.data import imageio
from rv2.data.torch_dataset import preprocess
from rv2.errors import UserError


@dataclass(frozen=True)
class Preprocessing:
    """Decoded grayscale [0, 1] image -> the network's input: centre crop to a square,
    resize to `image_size` (antialiased), (x - mean) / std, replicated to `channels`."""

    image_size: int
    mean: float
    std: float
    channels: int = 3

    @classmethod
    def from_model_config(cls, mcfg: dict) -> "Preprocessing":
        norm = mcfg.get("normalization") or {}
        return cls(int(mcfg["image_size"]), float(norm.get("mean", 0.0)),
                   float(norm.get("std", 1.0)), int(mcfg.get("in_channels", 3)))

    def pixels(self, img01: np.ndarray) -> np.ndarray:
        """H x W in [0, 1] -> S x S float32 in [0, 1] (crop + resize only)."""
        return preprocess(img01, self.image_size)

    def batch(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """S x S [0, 1] images -> N x C x S x S float32, normalised."""
        if not len(pixels):
            return np.zeros((0, self.channels, self.image_size, self.image_size), np.float32)
        x = (np.stack(pixels).astype(np.float32) - np.float32(self.mean)) / np.float32(self.std)
        return np.ascontiguousarray(np.repeat(x[:, None], self.channels, axis=1))


class Backend(Protocol):
    """The network: a preprocessed batch N x C x S x S float32 (numpy, C-contiguous)
    -> logits (N, L) float32 numpy. `max_batch_size` None means any."""

    name: str
    max_batch_size: int | None

    def logits(self, x: np.ndarray) -> np.ndarray: ...


class TorchBackend:
    """Eager torch DenseNet-121 (bf16 autocast and channels-last on CUDA)."""

    name = "torch"
    max_batch_size = None

    def __init__(self, model, device, amp: bool = True):
        import torch

        self.device = torch.device(device)
        self.amp = amp
        self.model = model.to(self.device).eval()
        if self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.logits_tensor(self._tensor(x)).cpu().numpy()

    def _tensor(self, x):
        import torch

        t = torch.as_tensor(x).to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    def logits_tensor(self, x):
        """Logits of a torch batch already on the device (float32 out)."""
        import torch

        ctx = (torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" and self.amp
               else contextlib.nullcontext())
        with torch.inference_mode(), ctx:
            return self.model(x.to(self.device)).float()


def sigmoid(z: np.ndarray) -> np.ndarray:
    """float32 logistic function (torch's kernel, so every backend rounds alike)."""
    import torch

    return torch.sigmoid(torch.as_tensor(np.asarray(z, dtype=np.float32))).numpy()


class Predictor:
    """Probabilities and thresholded labels of one trained classifier."""

    def __init__(self, labels: Sequence[str], thresholds: Mapping[str, float] | Sequence[float],
                 preprocessing: Preprocessing, backend: Backend,
                 model_dir: str | os.PathLike | None = None, threshold_rule: str = ">="):
        if isinstance(thresholds, Mapping):
            missing = [lab for lab in labels if lab not in thresholds]
            if missing:
                raise UserError(f"{model_dir}: thresholds.json has no threshold for {missing}")
            thresholds = [thresholds[lab] for lab in labels]
        if len(labels) != len(thresholds):
            raise UserError(f"{model_dir}: {len(labels)} labels but {len(thresholds)} thresholds")
        if threshold_rule != ">=":
            raise UserError(f"{model_dir}: unsupported threshold rule {threshold_rule!r} (expected '>=')")
        self.labels = list(labels)
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self.preprocessing = preprocessing
        self.backend = backend
        self.model_dir = Path(model_dir) if model_dir is not None else None

    @classmethod
    def load(cls, model_dir: str | os.PathLike, device: str = "auto",
             backend: Backend | None = None, amp: bool = True) -> "Predictor":
        """From a classifier folder (`rv2 train-classifier`); `backend` replaces the
        eager network (the folder's weights are then not loaded)."""
        p = md.check_model_dir(model_dir)
        mcfg = md.read_json(p / md.MODEL_CONFIG)
        thr = md.read_json(p / md.THRESHOLDS)
        if list(thr.get("labels", [])) != list(mcfg["labels"]):
            raise UserError(f"{p}: thresholds.json labels differ from model_config.json labels")
        if backend is None:
            from rv2.models.device import resolve_device

            model, _, _ = md.load_model(p, "cpu")
            backend = TorchBackend(model, resolve_device(device), amp=amp)
        return cls(mcfg["labels"], thr["thresholds"], Preprocessing.from_model_config(mcfg),
                   backend, p, thr.get("rule", ">="))

    # ------------------------------------------------------------------ inputs
    def decode(self, data: bytes, name: str = "<bytes>",
               max_pixels: int = imageio.DEFAULT_MAX_PIXELS) -> np.ndarray:
        """PNG, JPEG or DICOM bytes -> grayscale H x W in [0, 1] (ImageReadError if not one,
        or if larger than `max_pixels`: the decompression-bomb guard)."""
        return imageio.decode_image(data, name=name, max_pixels=max_pixels)

    def prepare(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Decoded [0, 1] images (any size) -> the network's input batch."""
        return self.preprocessing.batch([self.preprocessing.pixels(np.asarray(im, np.float32))
                                         for im in images])

    def check_input(self, x: np.ndarray) -> np.ndarray:
        """A preprocessed batch N x C x S x S (C = 1 is replicated), as float32."""
        s, c = self.preprocessing.image_size, self.preprocessing.channels
        x = np.asarray(x)
        if x.ndim != 4 or x.shape[1] not in (1, c) or x.shape[2:] != (s, s):
            raise UserError(f"input must be N x {c} x {s} x {s} (or N x 1 x {s} x {s}), "
                            f"got {tuple(x.shape)}")
        if x.shape[1] == 1 and c != 1:
            x = np.repeat(x, c, axis=1)
        return np.ascontiguousarray(x, dtype=np.float32)

    # ------------------------------------------------------------------ outputs
    def predict_tensor(self, x: np.ndarray) -> np.ndarray:
        """Probabilities (N, L) float32 of a preprocessed batch, split by the backend's
        maximum batch size."""
        x = self.check_input(x)
        cap = self.backend.max_batch_size or max(len(x), 1)
        parts = [self.backend.logits(x[i:i + cap]) for i in range(0, len(x), cap)]
        logits = np.concatenate(parts) if parts else np.zeros((0, len(self.labels)), np.float32)
        probs = sigmoid(logits)
        if not np.isfinite(probs).all():
            raise FloatingPointError(f"{self.backend.name} backend returned non-finite scores")
        return probs

    def predict_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self.predict_tensor(self.prepare(images))

    def predict_bytes(self, blobs: Sequence[bytes], names: Sequence[str] | None = None) -> np.ndarray:
        names = names or [f"<input {i}>" for i in range(len(blobs))]
        return self.predict_images([self.decode(b, n) for b, n in zip(blobs, names)])

    def positive(self, probs: np.ndarray) -> np.ndarray:
        """(N, L) bool: probability at or above the label's stored threshold (the saved
        rule, compared in float64 as `rv2.classify.thresholds.binarize` does)."""
        return np.asarray(probs, dtype=np.float64) >= self.thresholds[None, :]

    def positive_labels(self, probs: np.ndarray) -> list[list[str]]:
        return [[lab for lab, on in zip(self.labels, row) if on] for row in self.positive(probs)]


__all__ = ["Predictor", "Preprocessing", "Backend", "TorchBackend", "sigmoid"]
