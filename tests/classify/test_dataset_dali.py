"""The classifier's data loader by setting: batched DALI decoding (CPU operators here),
and the image root recorded by `rv2 data index`."""
import json
import shutil

import pandas as pd
import pytest
import torch
from rv2.classify.data import manifest_root
from rv2.data.schema import CHEXPERT_LABELS
from rv2.data.torch_dataset import ManifestDataset
from torch.utils.data import DataLoader


def _real_manifest(real_cxr, tmp_path):
    names = ["00000001_000.png", "00027426_000.png", "16747_3_1.jpg", "rv2demo_demo0002.jpg"]
    for n in names:
        shutil.copy(real_cxr / n, tmp_path / n)  # copied into the test's tmp folder only
    (tmp_path / "broken.jpg").write_bytes((real_cxr / names[2]).read_bytes()[:500])
    names.append("broken.jpg")
    return pd.DataFrame({"image_id": [f"i{k}" for k in range(len(names))], "path": names,
                         **{lab: [1.0] * len(names) for lab in CHEXPERT_LABELS}})


@pytest.mark.dali
def test_dali_loader_matches_pillow_and_reports_bad_files(real_cxr, tmp_path):
    df = _real_manifest(real_cxr, tmp_path)
    pil = ManifestDataset(df, tmp_path, image_size=64, mean=0.5, std=0.25)
    dali = ManifestDataset(df, tmp_path, image_size=64, mean=0.5, std=0.25, decoder="dali")
    batches = list(DataLoader(dali, batch_size=5, num_workers=0))
    assert len(batches) == 1
    b = batches[0]
    assert b["ok"].tolist() == [True, True, True, True, False]
    assert "broken.jpg" in b["error"][4]
    for i in range(4):
        ref = pil[i]["image"]
        # within 1/255 in [0,1] units, i.e. 1/255/std after normalization
        assert torch.max(torch.abs(b["image"][i] - ref)) <= (1 / 255) / 0.25 + 1e-6
        assert b["image"][i].shape == (3, 64, 64)
    assert torch.all(b["mask"][4] == 0)


def test_unknown_decoder_is_refused(tmp_path):
    df = pd.DataFrame({"image_id": ["a"], "path": ["a.png"]})
    with pytest.raises(ValueError, match="decoder must be one of"):
        ManifestDataset(df, tmp_path, require_labels=False, decoder="cv2")


def test_root_defaults_to_the_sidecar_root(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    m = tmp_path / "out" / "manifest.parquet"
    m.parent.mkdir()
    m.write_bytes(b"")
    assert manifest_root(m) == m.parent.resolve()
    (m.parent / "manifest.sidecar.json").write_text(json.dumps({"root": str(images)}))
    assert manifest_root(m) == images
    assert manifest_root(m, None, str(tmp_path)) == tmp_path  # an explicit root wins
    (m.parent / "manifest.sidecar.json").write_text(json.dumps({"root": str(tmp_path / "gone")}))
    assert manifest_root(m) == m.parent.resolve()
