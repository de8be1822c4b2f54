import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from rv2.classify.data import image_sample, patient_subset, select_split, val_rows
from rv2.data.schema import CHEXPERT_LABELS
from rv2.data.torch_dataset import ManifestDataset, label_targets, pixel_stats


def test_label_policies():
    v = np.array([[1.0, 0.0, -1.0, np.nan]])
    t, m = label_targets(v, "ignore", "zeros")
    assert t.tolist() == [[1, 0, 0, 0]] and m.tolist() == [[1, 1, 0, 1]]
    t, m = label_targets(v, "ones", "ignore")
    assert t.tolist() == [[1, 0, 1, 0]] and m.tolist() == [[1, 1, 1, 0]]
    t, m = label_targets(v, "zeros", "zeros")
    assert t.tolist() == [[1, 0, 0, 0]] and m.tolist() == [[1, 1, 1, 1]]
    with pytest.raises(ValueError, match="1, 0, -1 or NaN"):
        label_targets(np.array([[2.0]]))
    with pytest.raises(ValueError, match="uncertain_policy"):
        label_targets(v, "maybe")


def _manifest(tmp_path, arrays, labels=None):
    rows = []
    for i, a in enumerate(arrays):
        rel = f"im{i}.png"
        if a is not None:
            Image.fromarray(a, mode="L").save(tmp_path / rel)
        rows.append({"image_id": f"id{i}", "path": rel, "patient_id": f"p{i}", "sex": "F" if i else None,
                     "age": 50.0 if i else None, "race": "White", "age_bin": "40-60",
                     **{k: (labels[i][j] if labels else np.nan) for j, k in enumerate(CHEXPERT_LABELS)}})
    return pd.DataFrame(rows)


def test_item_is_centre_cropped_resized_normalized_three_channel(tmp_path):
    a = np.zeros((20, 40), np.uint8)
    a[:, 10:30] = 255  # the central 20x20 square is white, the sides black
    lab = [[1, 0, -1] + [np.nan] * 11]
    df = _manifest(tmp_path, [a], lab)
    ds = ManifestDataset(df, tmp_path, image_size=10, mean=0.5, std=0.25)
    item = ds[0]
    assert item["ok"] and item["image"].shape == (3, 10, 10) and item["image"].dtype == torch.float32
    # centre crop keeps only the white square: (1 - 0.5) / 0.25 = 2 everywhere
    assert torch.allclose(item["image"], torch.full((3, 10, 10), 2.0), atol=1e-5)
    # default label policy uncertain=0,blank=0: every label enters the loss
    assert item["target"][:4].tolist() == [1, 0, 0, 0] and item["mask"][:4].tolist() == [1, 1, 1, 1]
    ign = ManifestDataset(df, tmp_path, image_size=10, label_policy="uncertain=ignore,blank=ignore")[0]
    assert ign["target"][:4].tolist() == [1, 0, 0, 0] and ign["mask"][:4].tolist() == [1, 1, 0, 0]
    assert item["sex"] == "" and math.isnan(item["age"]) and item["race"] == "White"
    batch = torch.utils.data.default_collate([item, item])
    assert batch["image"].shape == (2, 3, 10, 10) and batch["ok"].tolist() == [True, True]


def test_bad_images_are_flagged_not_raised(tmp_path):
    df = _manifest(tmp_path, [np.full((8, 8), 7, np.uint8), None, None])
    (tmp_path / "im2.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    ds = ManifestDataset(df, tmp_path, image_size=8)
    assert ds[0]["ok"]
    for i in (1, 2):
        item = ds[i]
        assert not item["ok"] and f"im{i}.png" in item["error"]
        assert item["mask"].sum() == 0 and item["image"].abs().sum() == 0


def test_missing_columns_and_bad_std(tmp_path):
    df = _manifest(tmp_path, [np.zeros((4, 4), np.uint8)]).drop(columns=["Edema"])
    with pytest.raises(ValueError, match="Edema"):
        ManifestDataset(df, tmp_path, name="m.parquet")
    ManifestDataset(df, tmp_path, require_labels=False)  # predict needs no labels
    with pytest.raises(ValueError, match="std"):
        ManifestDataset(df, tmp_path, require_labels=False, std=0.0)


def test_pixel_stats_match_numpy_and_cache(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (12, 12), dtype=np.uint8) for _ in range(5)]
    df = _manifest(tmp_path, arrays + [None])
    ds = ManifestDataset(df, tmp_path, image_size=12, require_labels=False, cache=True)
    st = pixel_stats(ds, progress=False)
    allpix = np.stack(arrays).astype(np.float64) / 255
    assert st["n_images"] == 5
    assert st["mean"] == pytest.approx(allpix.mean(), abs=1e-6)
    assert st["std"] == pytest.approx(allpix.std(), abs=1e-6)
    (tmp_path / "im0.png").unlink()  # served from the cache now
    assert ds[0]["ok"]


def test_patient_subsets_are_whole_patients_seeded_and_nested():
    df = pd.DataFrame({"image_id": [f"i{k}" for k in range(60)],
                       "patient_id": [f"p{k // 3}" for k in range(60)]})  # 20 patients x 3 images
    a = patient_subset(df, n=10, seed=4)
    b = patient_subset(df, n=30, seed=4)
    assert 10 <= len(a) < 13 and 30 <= len(b) < 33
    assert set(a.image_id) <= set(b.image_id)
    for sub in (a, b):  # no patient split
        assert (df[df.patient_id.isin(sub.patient_id)].image_id.isin(sub.image_id)).all()
    assert patient_subset(df, n=10, seed=4).image_id.tolist() == a.image_id.tolist()
    assert patient_subset(df.sample(frac=1, random_state=1), n=10, seed=4).image_id.sort_values().tolist() \
        == sorted(a.image_id)  # independent of row order
    assert patient_subset(df, n=10, seed=5).image_id.tolist() != a.image_id.tolist()
    assert len(patient_subset(df, fraction=0.5, seed=0)) in (30, 31, 32)
    assert len(patient_subset(df, n=1000, seed=0)) == 60
    with pytest.raises(ValueError, match="not both"):
        patient_subset(df, n=3, fraction=0.1)
    s = image_sample(df, 7, seed=1)
    assert len(s) == 7 and set(s.image_id) <= set(image_sample(df, 20, seed=1).image_id)


def test_split_selection(tmp_path):
    df = pd.DataFrame({"split": ["train", "validate", "test", "train"], "x": range(4)})
    assert select_split(df, "train", "m").x.tolist() == [0, 3]
    assert val_rows(df, "val", "m").x.tolist() == [1]
    assert select_split(df, None, "m").x.tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="splits present"):
        select_split(df, "holdout", "m")
