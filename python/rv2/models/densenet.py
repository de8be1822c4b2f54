"""DenseNet-121 for the 14 CheXpert labels (torchvision architecture).

Initialization is either from scratch (seeded by the caller) or from the
torchvision ImageNet file `densenet121-a639ec97.pth` found by `rv2.weights`;
nothing is downloaded. The 1000-class ImageNet head is replaced by a freshly
initialised 14-output linear layer.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

from rv2.data.schema import CHEXPERT_LABELS
from rv2.errors import UserError
from rv2.weights import find_weights

ARCH = "densenet121"

# torchvision's published file predates a rename: `denselayer1.norm.1.weight`
# is now `denselayer1.norm1.weight`.
_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def densenet121(num_classes: int = len(CHEXPERT_LABELS), init: str = "scratch",
                weights_dir: str | os.PathLike | None = None,
                weights_path: str | os.PathLike | None = None):
    """A torchvision DenseNet-121 with `num_classes` outputs.

    init: "scratch" (random, seed torch before calling) or "imagenet" (local
    torchvision file; `MissingWeightsError` names the file and folders searched).
    """
    import torch
    from torchvision.models import densenet121 as tv_densenet121

    if init not in ("scratch", "imagenet"):
        raise UserError(f"init must be 'scratch' or 'imagenet', got {init!r}")
    model = tv_densenet121(weights=None, num_classes=num_classes)
    if init == "imagenet":
        if weights_path is None:
            weights_path = find_weights(["densenet_imagenet"], [weights_dir])["densenet_imagenet"]
        state = load_imagenet_state(weights_path)
        missing, unexpected = model.load_state_dict(state, strict=False)
        # the published file predates BatchNorm's num_batches_tracked buffers
        bad_missing = [k for k in missing
                       if not k.startswith("classifier.") and not k.endswith("num_batches_tracked")]
        if bad_missing or unexpected:
            raise UserError(
                f"{weights_path}: not a torchvision DenseNet-121 state dict "
                f"(missing {bad_missing[:5]}, unexpected {list(unexpected)[:5]})")
        torch.nn.init.zeros_(model.classifier.bias)
    return model


def load_imagenet_state(path: str | os.PathLike) -> dict:
    """The feature weights of a torchvision DenseNet-121 file (old or new key names),
    without the ImageNet classifier."""
    import torch

    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - report which file and why
        raise UserError(f"{path}: cannot read DenseNet-121 weights: {exc}") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a state dict, got {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        key = key.removeprefix("module.")
        m = _OLD_KEY.match(key)
        if m:
            key = m.group(1) + m.group(2)
        if key.startswith("classifier."):
            continue
        out[key] = value
    return out


def build_from_model_config(model_cfg: dict):
    """An untrained network shaped as a saved model dir describes it."""
    if model_cfg.get("arch", ARCH) != ARCH:
        raise UserError(f"unknown classifier arch {model_cfg.get('arch')!r}; rv2 knows {ARCH!r}")
    return densenet121(num_classes=len(model_cfg["labels"]), init="scratch")


def model_config(labels: Sequence[str], image_size: int, mean: float, std: float) -> dict:
    """What a predictor needs to rebuild and feed the network."""
    return {"arch": ARCH, "labels": list(labels), "num_classes": len(labels),
            "image_size": int(image_size), "in_channels": 3, "input": "grayscale replicated to 3 channels",
            "normalization": {"mean": float(mean), "std": float(std)},
            "preprocess": "centre crop to square, resize (antialias) to image_size, [0,1], (x-mean)/std"}
