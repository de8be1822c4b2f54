"""Adapters on the real metadata shipped in the torchxrayvision wheel.

Each test counts views, sexes and labels from the raw file with plain pandas /
regular expressions (not the adapter's code) and compares with the manifest.
"""
from __future__ import annotations

import importlib.util
import re
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rv2.data.config import IndexConfig
from rv2.data.index import index_dataset
from rv2.data.manifest import read_manifest, write_manifest
from rv2.data.schema import CHEXPERT_LABELS, REQUIRED_COLUMNS


@pytest.fixture(scope="module")
def xrv() -> Path:
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None:
        pytest.skip("torchxrayvision is not installed (its wheel ships the real metadata)")
    d = Path(list(spec.submodule_search_locations)[0]) / "data"
    if not (d / "Data_Entry_2017_v2020.csv.gz").is_file():
        pytest.skip(f"torchxrayvision data files missing under {d}")
    return d


def pos(df, c):
    return int((df[c].to_numpy(dtype=float) == 1).sum())


def vc(series) -> dict:
    return {k: int(v) for k, v in series.value_counts().items()}


# ------------------------------------------------------------------ NIH

@pytest.fixture(scope="module")
def nih(xrv):
    raw = pd.read_csv(xrv / "Data_Entry_2017_v2020.csv.gz")
    df, side = index_dataset("nih", [xrv / "Data_Entry_2017_v2020.csv.gz"], progress=False)
    return raw, df, side


def test_nih_counts_equal_raw(nih, xrv, tmp_path):
    raw, df, side = nih
    assert len(df) == len(raw) == 112120
    assert vc(df["view"]) == vc(raw["View Position"]) == {"PA": 67310, "AP": 44810}
    assert vc(df["sex"]) == vc(raw["Patient Gender"])
    names = {"Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly",
             "Consolidation": "Consolidation", "Edema": "Edema",
             "Pleural Effusion": "Effusion", "Pneumonia": "Pneumonia",
             "Pneumothorax": "Pneumothorax", "No Finding": "No Finding"}
    for col, nih_name in names.items():
        raw_n = int(raw["Finding Labels"].str.split("|").apply(lambda xs: nih_name in xs).sum())
        assert pos(df, col) == raw_n, col
        assert int((df[col] == 0).sum()) == len(raw) - raw_n, col
    for col in ("Lung Opacity", "Fracture"):  # not defined by NIH
        assert pos(df, col) == 0
        assert df[col].isna().sum() == len(raw) - pos(df, "No Finding")  # rule fills NF rows
    assert df["Support Devices"].isna().all()  # exempt from the No Finding rule
    assert (df["age"].to_numpy() == raw["Patient Age"].to_numpy()).all()
    assert df["race"].isna().all() and (df["split"] == "test").all()
    # the official split lists
    (tmp_path / "test_list.txt").write_text("\n".join(raw["Image Index"][:100]) + "\n")
    (tmp_path / "train_val_list.txt").write_text("\n".join(raw["Image Index"][100:]) + "\n")
    d2, s2 = index_dataset("nih", [xrv / "Data_Entry_2017_v2020.csv.gz",
                                   tmp_path / "test_list.txt", tmp_path / "train_val_list.txt"],
                           config=IndexConfig(views="PA"), progress=False)
    assert len(d2) == 67310
    assert vc(d2["split"]) == {"test": int((raw["View Position"][:100] == "PA").sum()),
                               "train": int((raw["View Position"][100:] == "PA").sum())}
    assert s2["exclusions"][-1] == {"step": "view not in ['PA']", "removed": 44810,
                                    "remaining": 67310}


def test_manifest_roundtrip_and_schema(nih, tmp_path):
    _, df, side = nih
    out = write_manifest(df.head(500), tmp_path / "nih.parquet", side)
    back = read_manifest(out)
    assert list(back.columns[:len(REQUIRED_COLUMNS)]) == list(REQUIRED_COLUMNS)
    pd.testing.assert_frame_equal(back, df.head(500).reset_index(drop=True), check_dtype=False)
    assert back["age"].dtype == np.float64 and back["Cardiomegaly"].dtype == np.float64
    # a Parquet file without the schema is refused with the missing columns named
    pd.DataFrame({"image_id": ["a"]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="missing column"):
        read_manifest(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="not found"):
        read_manifest(tmp_path / "nope.parquet")
    bad = df.head(3).copy()
    bad["sex"] = ["F", "X", None]
    with pytest.raises(ValueError, match="'sex'"):
        write_manifest(bad, tmp_path / "b.parquet", {})


# ------------------------------------------------------------------ CheXpert

def test_chexpert_counts_equal_raw(xrv):
    raw = pd.read_csv(xrv / "chexpert_train.csv.gz")
    df, side = index_dataset("chexpert", [xrv / "chexpert_train.csv.gz"], progress=False)
    assert len(df) == len(raw) == 223414
    lateral = raw["Frontal/Lateral"] == "Lateral"
    # DICOM view positions: RL = right lateral (LATERAL), LL = left lateral, even where
    # CheXpert's Frontal/Lateral column says Frontal
    assert int((df["view"] == "LATERAL").sum()) == int((lateral | (raw["AP/PA"] == "RL")).sum())
    assert int((df["view"] == "LL").sum()) == int((~lateral & (raw["AP/PA"] == "LL")).sum())
    for v in ("AP", "PA"):
        assert int((df["view"] == v).sum()) == int(((raw["AP/PA"] == v) & ~lateral).sum())
    assert int((df["sex"] == "F").sum()) == int((raw["Sex"] == "Female").sum())
    assert int((df["sex"] == "M").sum()) == int((raw["Sex"] == "Male").sum())
    nf = raw["No Finding"] == 1
    findings = [c for c in CHEXPERT_LABELS if c not in ("No Finding", "Support Devices")]
    abnormal = (raw[findings] == 1).any(axis=1)
    for c in CHEXPERT_LABELS:
        for value in (1.0, -1.0):
            assert int((df[c] == value).sum()) == int((raw[c] == value).sum()), (c, value)
        if c == "No Finding":
            filled = int((abnormal & raw[c].isna()).sum())
        else:
            filled = 0 if c == "Support Devices" else int((nf & raw[c].isna()).sum())
        assert int((df[c] == 0).sum()) == int((raw[c] == 0).sum()) + filled, c
    assert side["no_finding_rule"]["rows_with_no_finding"] == int(nf.sum())
    assert (df["split"] == "train").all()
    assert df["image_id"].is_unique


# ------------------------------------------------------------------ PadChest

def test_padchest_counts_equal_raw(xrv):
    f = xrv / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
    raw = pd.read_csv(f, usecols=["ImageID", "ImageDir", "Projection", "PatientSex_DICOM",
                                  "Labels", "StudyDate_DICOM", "PatientBirth"])
    df, _ = index_dataset("padchest", [f], progress=False)
    assert len(df) == len(raw) == 160861
    proj = raw["Projection"].map({"PA": "PA", "L": "LATERAL", "AP": "AP",
                                  "AP_horizontal": "AP_HORIZONTAL", "COSTAL": "OTHER",
                                  "EXCLUDE": "OTHER"})
    assert vc(df["view"]) == vc(proj)
    assert vc(df["sex"]) == vc(raw["PatientSex_DICOM"][raw["PatientSex_DICOM"].isin(["F", "M"])])
    items = raw["Labels"].fillna("").map(lambda s: [x.strip().lower()
                                                    for x in re.findall(r"'([^']*)'", s) if x.strip()])
    for col, word in (("Atelectasis", "atelectasis"), ("Cardiomegaly", "cardiomegaly"),
                      ("Consolidation", "consolidation"), ("Edema", "edema"),
                      ("Pneumonia", "pneumonia"), ("Pneumothorax", "pneumothorax")):
        assert pos(df, col) == int(items.map(lambda xs: any(word in x for x in xs)).sum()), col
    eff = items.map(lambda xs: any("effusion" in x and "pericardial" not in x for x in xs))
    assert pos(df, "Pleural Effusion") == int(eff.sum())
    assert pos(df, "No Finding") == int(items.map(lambda xs: xs == ["normal"]).sum())
    # "abnormal" items never count as normal
    assert not (items.map(lambda xs: any("abnormal" in x for x in xs))
                & (df["No Finding"] == 1)).any()
    age = pd.to_numeric(raw["StudyDate_DICOM"], errors="coerce") // 10000 - raw["PatientBirth"]
    np.testing.assert_array_equal(df["age"].to_numpy(), age.to_numpy(dtype=float))
    assert df["path"].iloc[0] == f"{raw['ImageDir'].iloc[0]}/{raw['ImageID'].iloc[0]}"


# ------------------------------------------------------------------ VinDr

def test_vindr_counts_equal_raw(xrv):
    raw = pd.read_csv(xrv / "vinbigdata-train.csv.gz")
    df, _ = index_dataset("vindr", [xrv / "vinbigdata-train.csv.gz"], progress=False)
    assert len(df) == raw["image_id"].nunique() == 15000
    per_image = raw.groupby("image_id")["class_name"].apply(set)
    for col, name in (("Atelectasis", "Atelectasis"), ("Cardiomegaly", "Cardiomegaly"),
                      ("Consolidation", "Consolidation"), ("Pleural Effusion", "Pleural effusion"),
                      ("Pneumothorax", "Pneumothorax")):
        assert pos(df, col) == int(per_image.map(lambda s: name in s).sum()), col
    assert pos(df, "No Finding") == int(per_image.map(lambda s: s == {"No finding"}).sum())
    assert df["Edema"].isna().sum() == 15000 - pos(df, "No Finding")  # not in the Kaggle file
    assert df["path"].str.match(r"train/[0-9a-f]{32}\.dicom$").all()
    assert (df["readers"] == 3).all()


# ------------------------------------------------------------------ OpenI

def test_openi_reports_and_labels(xrv):
    tgz = xrv / "NLMCXR_reports.tgz"
    df, side = index_dataset("openi", [tgz, xrv / "nlmcxr_dicom_metadata.csv.gz"], progress=False)
    n_reports, n_images, normal_imgs, cardio_imgs = 0, 0, 0, 0
    with tarfile.open(tgz) as tar:
        for m in tar:
            if not m.name.endswith(".xml"):
                continue
            n_reports += 1
            text = tar.extractfile(m).read().decode()
            k = len(re.findall(r"<parentImage id=", text))
            n_images += k
            majors = re.findall(r"<major>([^<]*)</major>", text)
            if majors and all(x.strip().lower() == "normal" for x in majors):
                normal_imgs += k
            if any(x.split("/")[0].strip().lower() == "cardiomegaly" for x in majors):
                cardio_imgs += k
    assert n_reports == 3955
    assert len(df) == n_images
    assert side["reports_without_images"] == n_reports - df["study_id"].nunique()
    assert pos(df, "No Finding") == normal_imgs and pos(df, "Cardiomegaly") == cardio_imgs
    with_imp = df.dropna(subset=["impression"]).drop_duplicates("study_id")
    assert with_imp["impression"].str.len().gt(0).all()
    # 3,921 of the 3,955 reports have an impression; some of those have no image
    assert len(with_imp) <= 3921
    meta = pd.read_csv(xrv / "nlmcxr_dicom_metadata.csv.gz", usecols=["imageid", "View Position"])
    m = meta.set_index("imageid")["View Position"].reindex(df["image_id"])
    assert int((df["view"] == "PA").sum()) == int((m == "PA").sum())
    assert int((df["view"] == "LATERAL").sum()) == int(m.isin(["LATERAL", "RL",
                                                                "LARGE LATERAL"]).sum())
