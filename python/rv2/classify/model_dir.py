"""The classifier's model folder: what `train-classifier` writes and `predict` reads.

    model.safetensors   best weights (torchvision DenseNet-121 state dict)
    model_config.json   arch, label order, image size, normalization, preprocessing
    normalization.json  training-set pixel mean/std and where they came from
    thresholds.json     {"labels", "thresholds", "rule": ">=", "tie_rule", ...}
    config.json         the ClassifierConfig of the run
    history.csv         one row per epoch (losses, AUROCs, lr, speed)
    rv2_meta.json       rv2 version, inputs' hashes, summary
    state/last.pt       resumable training state (removed when the run completes)
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from rv2.errors import MissingInputError, UserError
from rv2.files import atomic_path
from rv2.models.densenet import build_from_model_config

WEIGHTS = "model.safetensors"
MODEL_CONFIG = "model_config.json"
NORMALIZATION = "normalization.json"
THRESHOLDS = "thresholds.json"
CONFIG = "config.json"
HISTORY = "history.csv"
STATE = "state/last.pt"
REQUIRED = (WEIGHTS, MODEL_CONFIG, THRESHOLDS)


class ModelDirError(MissingInputError):
    """A model folder that lacks a file predict needs."""


def check_model_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise ModelDirError(f"model folder not found: {p} (train one with `rv2 train-classifier`)")
    missing = [f for f in REQUIRED if not (p / f).is_file()]
    if missing:
        hint = (" Training has not finished: rerun the same `rv2 train-classifier` command to resume."
                if (p / STATE).is_file() else "")
        raise ModelDirError(f"{p}: not a complete classifier folder, missing {missing}.{hint}")
    return p


def save_weights(model, path: str | os.PathLike) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


def load_weights(model, path: str | os.PathLike) -> None:
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{path}: cannot read classifier weights: {exc}") from exc
    model.load_state_dict(state, strict=True)


def read_json(path: str | os.PathLike) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON: {exc}") from exc


def load_model(path: str | os.PathLike, device: str = "cpu"):
    """(model in eval mode, model_config, thresholds) from a model folder."""

    p = check_model_dir(path)
    mcfg = read_json(p / MODEL_CONFIG)
    thr = read_json(p / THRESHOLDS)
    if list(thr.get("labels", [])) != list(mcfg["labels"]):
        raise UserError(f"{p}: thresholds.json labels differ from model_config.json labels")
    model = build_from_model_config(mcfg)
    load_weights(model, p / WEIGHTS)
    return model.to(device).eval(), mcfg, thr
