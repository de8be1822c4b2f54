"""A tiny dataset in which every label is visible: label k lights cell k of a 4x4 grid."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from rv2.data.schema import CHEXPERT_LABELS, age_bin


def make_manifest(folder: Path, n: int, *, seed: int, size: int = 32, split: str | None = "train",
                  prefix: str = "img", patients_per_image: float = 0.5, label_rate: float = 0.35,
                  uncertain_rate: float = 0.05, unknown_rate: float = 0.05,
                  name: str = "manifest.parquet") -> Path:
    """PNG images (8-bit, size x (size+4): not square, so the centre crop matters) and a manifest."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    cell = size // 4
    rows = []
    n_pat = max(1, int(n * patients_per_image))
    for i in range(n):
        pos = rng.random(len(CHEXPERT_LABELS)) < label_rate
        img = rng.normal(0.3, 0.05, (size, size + 4))
        for k in np.nonzero(pos)[0]:
            r, c = divmod(int(k), 4)
            img[r * cell + 1:(r + 1) * cell - 1, 2 + c * cell + 1:2 + (c + 1) * cell - 1] += 0.5
        rel = f"images/{prefix}_{i:04d}.png"
        Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8), mode="L").save(folder / rel)
        vals = pos.astype(float)
        u = rng.random(len(vals))
        vals[u < uncertain_rate] = -1.0
        vals[(u >= uncertain_rate) & (u < uncertain_rate + unknown_rate) & ~pos] = np.nan
        age = float(rng.integers(20, 90))
        rows.append({"image_id": f"{prefix}_{i:04d}", "path": rel, "patient_id": f"{prefix}_p{i % n_pat}",
                     "study_id": f"{prefix}_s{i}", "dataset": "test", "view": "PA",
                     "sex": ["F", "M"][i % 2], "age": age, "age_bin": age_bin(age),
                     "race": ["Asian", "Black", "Hispanic", "White"][i % 4], "split": split,
                     **dict(zip(CHEXPERT_LABELS, vals))})
    df = pd.DataFrame(rows)
    path = folder / name
    df.to_parquet(path, index=False)
    return path


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: the tiny convolutions here gain nothing from two, and on a
    shared 2-core machine two spinning OpenMP threads run several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Real (train), synthetic and validation manifests of visible-label images."""
    base = tmp_path_factory.mktemp("classify_data")
    return {
        "real": make_manifest(base / "real", 48, seed=1, prefix="real"),
        "synthetic": make_manifest(base / "syn", 32, seed=2, prefix="syn", split=None),
        "val": make_manifest(base / "val", 32, seed=3, prefix="val", split="val",
                             uncertain_rate=0.0, unknown_rate=0.0),
    }
