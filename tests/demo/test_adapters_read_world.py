"""The data engineer's adapters read the phantom world unchanged, and get its truth back."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from rv2.data.schema import CHEXPERT_LABELS
from rv2.demo.writers import WorldConfig, write_world

index = pytest.importorskip("rv2.data.index")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_world(WorldConfig(seed=9, mimic_subjects=80, chexpert_subjects=30, nih_subjects=30),
                       tmp_path_factory.mktemp("w"), show_progress=False)


def _truth(world, site):
    t = pd.read_csv(world.truth, dtype={"group": str}, keep_default_na=False)
    return t[(t.site == site) & (t.view == "PA")]


def test_mimic_adapter_applies_the_paper_rules_to_the_world(world):
    files = [world.mimic_metadata, world.mimic_chexpert, world.mimic_split, world.patients,
             world.admissions]
    df, side = index.index_dataset("mimic", files, world.mimic_root,
                                   config=index.IndexConfig(views="PA"), progress=False)
    t = _truth(world, "mimic")
    pats = pd.read_csv(world.patients, dtype=str)
    meta = pd.read_csv(world.mimic_metadata, dtype=str).set_index("dicom_id")
    t = t.assign(subject=meta.loc[t.image_id, "subject_id"].to_numpy())
    keep = t[(t.group != "") & (t.nondescriptive == 0) & t.subject.isin(pats.subject_id)]
    assert set(df.image_id) == set(keep.image_id)
    df = df.set_index("image_id").loc[keep.image_id]
    assert (df.sex.to_numpy() == keep.sex.to_numpy()).all()
    assert np.allclose(df.age.to_numpy(dtype=float), keep.age.to_numpy(dtype=float))
    assert (df.race.to_numpy() == keep.group.to_numpy()).all()
    assert ((df.split == "test").to_numpy() == (keep.folder_split == "test").to_numpy()).all()
    for c in CHEXPERT_LABELS:
        truth = pd.to_numeric(keep[c], errors="coerce").to_numpy()
        got = df[c].to_numpy(dtype=float)
        stated = ~np.isnan(truth)
        assert np.array_equal(got[stated], truth[stated]), c
    assert [e["removed"] for e in side["exclusions"][1:] if e["removed"]]  # exclusions did work


def test_chexpert_adapter_reads_the_external_site_with_race(world):
    df, _ = index.index_dataset("chexpert", [world.chexpert_csv, world.chexpert_demographics],
                                world.chexpert_root, config=index.IndexConfig(views="PA"),
                                progress=False)
    t = _truth(world, "chexpert").set_index("path")
    assert set(df.path) == set(t.index)
    t = t.loc[df.path]
    assert (df.race.to_numpy() == t.group.to_numpy()).all()
    assert (df.sex.to_numpy() == t.sex.to_numpy()).all()
    for p in df.path[:10]:
        assert (world.chexpert_root / p).is_file()


def test_nih_adapter_reads_the_nih_site(world):
    df, _ = index.index_dataset("nih", [world.nih_csv], world.nih_root,
                                config=index.IndexConfig(views="PA"), progress=False)
    t = _truth(world, "nih").set_index("image_id")
    assert set(df.image_id) == set(t.index)
    t = t.loc[df.image_id]
    assert (df.sex.to_numpy() == t.sex.to_numpy()).all()
    assert df.race.isna().all()  # NIH records no race
    for c in ("Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Edema"):
        truth = (pd.to_numeric(t[c], errors="coerce") == 1).to_numpy()
        assert np.array_equal(df[c].to_numpy(dtype=float) == 1, truth), c
    for p in df.path[:10]:
        assert (world.nih_root / p).is_file()
