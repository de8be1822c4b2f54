"""The world's writers produce the official MIMIC-CXR-JPG + MIMIC-IV and CheXpert layouts."""
from __future__ import annotations

import filecmp
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from rv2.data.schema import CHEXPERT_LABELS
from rv2.demo.radiology_reports import impression
from rv2.demo.world import read_markers
from rv2.demo.writers import (
    ADMISSIONS_COLUMNS,
    METADATA_COLUMNS,
    PATIENTS_COLUMNS,
    RACE_STRINGS,
    WorldConfig,
    WorldPaths,
    write_world,
)

SMALL = WorldConfig(seed=5, mimic_subjects=60, chexpert_subjects=20, nih_subjects=20)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> WorldPaths:
    return write_world(SMALL, tmp_path_factory.mktemp("world"), show_progress=False)


def _csv(p):
    return pd.read_csv(p, dtype=str, keep_default_na=False)


def test_mimic_csv_headers_are_exact(world):
    assert tuple(_csv(world.mimic_metadata).columns) == METADATA_COLUMNS
    assert list(_csv(world.mimic_chexpert).columns) == ["subject_id", "study_id"] + sorted(CHEXPERT_LABELS)
    assert list(_csv(world.mimic_split).columns) == ["dicom_id", "study_id", "subject_id", "split"]
    assert tuple(_csv(world.patients).columns) == PATIENTS_COLUMNS
    assert tuple(_csv(world.admissions).columns) == ADMISSIONS_COLUMNS


def test_every_image_and_report_lies_where_mimic_puts_it(world):
    meta = _csv(world.mimic_metadata)
    split = _csv(world.mimic_split)
    assert set(meta.dicom_id) == set(split.dicom_id)
    assert meta.dicom_id.is_unique
    prefixes = set()
    for r in meta.itertuples():
        assert re.fullmatch(r"1\d{7}", r.subject_id) and re.fullmatch(r"5\d{7}", r.study_id)
        assert re.fullmatch(r"([0-9a-f]{8}-){4}[0-9a-f]{8}", r.dicom_id)
        pre = f"p{r.subject_id[:2]}"
        prefixes.add(pre)
        study = world.mimic_root / "files" / pre / f"p{r.subject_id}" / f"s{r.study_id}"
        img = Image.open(study / f"{r.dicom_id}.jpg")
        assert img.format == "JPEG" and img.mode == "L"
        assert img.size == (int(r.Columns), int(r.Rows)) == (SMALL.image_size,) * 2
        assert (study.parent / f"s{r.study_id}.txt").is_file()
        assert r.ViewPosition in ("PA", "AP", "LATERAL")
        assert re.fullmatch(r"2[01]\d{2}[01]\d[0-3]\d", r.StudyDate)
    assert prefixes <= {f"p{i}" for i in range(10, 20)} and "p19" in prefixes
    assert {"PA", "LATERAL"} <= set(meta.ViewPosition)
    chex = _csv(world.mimic_chexpert)
    assert set(chex.study_id) == set(meta.study_id)
    for col in sorted(CHEXPERT_LABELS):
        assert set(chex[col]) <= {"", "1.0", "0.0", "-1.0"}


def test_reports_carry_the_impression_and_labels_match_truth(world):
    truth = _csv(world.truth)
    meta = _csv(world.mimic_metadata).set_index("dicom_id")
    chex = _csv(world.mimic_chexpert).set_index("study_id")
    mimic = truth[truth.site == "mimic"]
    for r in mimic.itertuples():
        m = meta.loc[r.image_id]
        txt = (world.mimic_root / "files" / f"p{m.subject_id[:2]}" / f"p{m.subject_id}"
               / f"s{m.study_id}.txt").read_text()
        assert txt.split("IMPRESSION:")[1].strip() == r.impression
        row = chex.loc[m.study_id]
        for col in CHEXPERT_LABELS:
            assert row[col] == truth.at[r.Index, col]


def test_demographics_tables_give_back_the_rendered_demographics(world):
    truth = _csv(world.truth)
    meta = _csv(world.mimic_metadata).set_index("dicom_id")
    pats = _csv(world.patients).set_index("subject_id")
    adm = _csv(world.admissions)
    known = {s: g for g, ss in RACE_STRINGS.items() for s in ss}
    races = adm.groupby("subject_id").race.agg(lambda s: {known[x] for x in s})
    assert races.map(len).max() == 1  # one group per subject across admissions
    missing = 0
    for r in truth[truth.site == "mimic"].itertuples():
        m = meta.loc[r.image_id]
        if m.subject_id not in pats.index:
            missing += 1
            continue
        p = pats.loc[m.subject_id]
        assert p.gender == r.sex
        # MIMIC-IV age at the study: anchor_age shifted by the study year
        assert int(p.anchor_age) + int(m.StudyDate[:4]) - int(p.anchor_year) == int(r.age)
        group = next(iter(races[m.subject_id])) if m.subject_id in races.index else None
        assert (group or "") == r.group
        # the image's markers say the same
        img = np.asarray(Image.open(world.mimic_root / r.path))
        mk = read_markers(img)
        assert (mk["sex"], mk["group"] or "") == (r.sex, r.group)
    assert missing < len(truth) * 0.1


def test_chexpert_site_layout(world):
    df = _csv(world.chexpert_csv)
    assert tuple(df.columns) == ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA") + CHEXPERT_LABELS
    for r in df.itertuples():
        assert re.fullmatch(r"CheXpert-v1\.0-small/train/patient\d{5}/study\d+/view\d_(frontal|lateral)\.jpg",
                            r.Path)
        assert (world.chexpert_root / r.Path).is_file()
        assert r.Sex in ("Male", "Female") and 18 <= int(r.Age) <= 89
        assert (r._4 == "Lateral") == ("lateral" in r.Path)
    assert set(df["AP/PA"]) <= {"AP", "PA", ""}


def test_nondescriptive_impressions_and_exclusion_cases_exist():
    cfg = WorldConfig(seed=1, mimic_subjects=300)
    from rv2.demo.sites import get_site
    from rv2.demo.world import sample_case, sample_subject

    site = get_site("mimic")
    cases = [sample_case(1, site, i) for i in range(cfg.mimic_subjects)]
    assert any(impression(c) == "___" for c in cases)
    assert any(sample_subject(1, site, i)["group"] is None for i in range(cfg.mimic_subjects))


def test_writing_is_deterministic(tmp_path):
    cfg = WorldConfig(seed=2, mimic_subjects=8, chexpert_subjects=4)
    a = write_world(cfg, tmp_path / "a", show_progress=False)
    b = write_world(cfg, tmp_path / "b", show_progress=False)
    for name in ("mimic_metadata", "mimic_chexpert", "mimic_split", "patients", "admissions",
                 "chexpert_csv", "truth"):
        assert filecmp.cmp(getattr(a, name), getattr(b, name), shallow=False), name
    files = sorted(p.relative_to(a.root) for p in a.root.rglob("*.jpg"))
    assert files == sorted(p.relative_to(b.root) for p in b.root.rglob("*.jpg"))
    for f in files:
        assert (a.root / f).read_bytes() == (b.root / f).read_bytes()
    c = write_world(WorldConfig(seed=3, mimic_subjects=8, chexpert_subjects=4), tmp_path / "c",
                    show_progress=False)
    assert not filecmp.cmp(a.mimic_metadata, c.mimic_metadata, shallow=False)


def test_nih_site_layout(world):
    from rv2.demo.writers import NIH_HEADER

    text = world.nih_csv.read_text().splitlines()
    assert text[0] == NIH_HEADER
    known = {"Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Pneumonia",
             "Pneumothorax", "No Finding"}
    truth = _csv(world.truth).set_index("image_id")
    for line in text[1:]:
        cells = line.split(",")
        assert len(cells) == 11
        name, labels_, follow, pid, age, sex, view = cells[:7]
        assert re.fullmatch(r"\d{8}_\d{3}\.png", name) and name.startswith(f"{int(pid):08d}_")
        assert int(follow) == int(name[9:12])
        assert set(labels_.split("|")) <= known and sex in ("M", "F") and view in ("PA", "AP")
        img = Image.open(world.nih_root / "images" / name)
        assert img.format == "PNG" and img.mode == "L"
        t = truth.loc[name[:-4]]
        assert (t.sex, int(t.age)) == (sex, int(age))
        assert (t["Cardiomegaly"] == "1.0") == ("Cardiomegaly" in labels_)
        assert (t["Pleural Effusion"] == "1.0") == ("Effusion" in labels_)
