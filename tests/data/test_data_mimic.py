"""The MIMIC adapter on a small tree written here in the exact MIMIC-CXR-JPG + MIMIC-IV layout."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image
from rv2.data.config import IndexConfig
from rv2.data.index import index_dataset
from rv2.data.manifest import read_manifest, read_sidecar
from rv2.data.schema import CHEXPERT_LABELS

REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough

 COMPARISON:  ___

 FINDINGS:

 The lungs are clear. Heart size is normal.

 IMPRESSION:

 {imp}
"""
REPORT_NO_IMPRESSION = """ FINAL REPORT
 FINDINGS:  Lungs are clear without consolidation.
"""

RACES = {  # subject -> list of admission race strings
    "white": ["WHITE", "WHITE - OTHER EUROPEAN"],
    "black": ["BLACK/AFRICAN AMERICAN"],
    "asian": ["ASIAN - CHINESE", "UNKNOWN"],
    "hisp": ["HISPANIC/LATINO - PUERTO RICAN"],
    "other": ["AMERICAN INDIAN/ALASKA NATIVE"],
    "mixed": ["WHITE", "BLACK/AFRICAN AMERICAN"],
    "unknown": ["UNABLE TO OBTAIN", "PATIENT DECLINED TO ANSWER"],
}


def make_mimic_tree(root, seed=0):
    """Write 60 subjects (6 per folder p10..p19) with 1-2 studies of PA + LATERAL images.

    Returns the metadata paths and the expected exclusion counts (PA images only).
    """
    rng = np.random.default_rng(seed)
    meta, labels, pats, adms = [], [], [], []
    expect = {"lateral": 0, "report": 0, "impression": 0, "nondesc": 0, "demo": 0, "race": 0,
              "kept": 0}
    kinds = ["white", "black", "asian", "hisp", "white", "black"]
    hadm = 20000000
    for folder in range(10, 20):
        for k in range(6):
            subject = int(f"{folder}{k:06d}")
            race_kind = kinds[k]
            # a few subjects with problems (same pattern in every folder)
            problem = {0: None, 1: None, 2: "other_race" if folder % 3 == 0 else None,
                       3: "no_patient" if folder % 4 == 0 else None, 4: None,
                       5: "mixed_race" if folder == 15 else ("unknown_race" if folder == 16 else None)}[k]
            if problem == "other_race":
                race_kind = "other"
            if problem == "mixed_race":
                race_kind = "mixed"
            if problem == "unknown_race":
                race_kind = "unknown"
            if problem != "no_patient":
                pats.append({"subject_id": subject, "gender": "F" if k % 2 else "M",
                             "anchor_age": 30 + 5 * k, "anchor_year": 2150,
                             "anchor_year_group": "2011 - 2013", "dod": None})
            for r in RACES[race_kind]:
                hadm += 1
                adms.append({"subject_id": subject, "hadm_id": hadm, "admittime": "2150-01-01",
                             "race": r, "insurance": "Other"})
            n_studies = 1 + (k % 2)
            for s in range(n_studies):
                study = int(f"5{folder}{k:04d}{s}")
                sdir = root / "files" / f"p{folder}" / f"p{subject}"
                report_kind = ["ok", "ok", "ok", "missing", "noimp", "nondesc"][(k + s + folder) % 6]
                if report_kind != "missing":
                    sdir.mkdir(parents=True, exist_ok=True)
                    text = {"ok": REPORT.format(imp="No acute cardiopulmonary process."),
                            "noimp": REPORT_NO_IMPRESSION,
                            "nondesc": REPORT.format(imp="As above.")}[report_kind]
                    (sdir / f"s{study}.txt").write_text(text)
                row = {"subject_id": subject, "study_id": study}
                for c in CHEXPERT_LABELS:
                    row[c] = rng.choice([1.0, 0.0, -1.0, np.nan])
                labels.append(row)
                for view in ("PA", "LATERAL"):
                    dicom = f"{subject:x}-{study:x}-{view.lower()}"
                    idir = sdir / f"s{study}"
                    idir.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(
                        idir / f"{dicom}.jpg")
                    meta.append({"dicom_id": dicom, "subject_id": subject, "study_id": study,
                                 "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
                                 "ViewPosition": view, "Rows": 8, "Columns": 8,
                                 "StudyDate": 21520304 + s, "StudyTime": 101010.5,
                                 "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
                                 "ViewCodeSequence_CodeMeaning": "postero-anterior",
                                 "PatientOrientationCodeSequence_CodeMeaning": "Erect"})
                    if view != "PA":
                        expect["lateral"] += 1
                        continue
                    if report_kind == "missing":
                        expect["report"] += 1
                    elif report_kind == "noimp":
                        expect["impression"] += 1
                    elif report_kind == "nondesc":
                        expect["nondesc"] += 1
                    elif problem == "no_patient":
                        expect["demo"] += 1
                    elif race_kind not in ("white", "black", "asian", "hisp"):
                        expect["race"] += 1
                    else:
                        expect["kept"] += 1
    files = {
        "metadata": root / "mimic-cxr-2.0.0-metadata.csv.gz",
        "chexpert": root / "mimic-cxr-2.0.0-chexpert.csv.gz",
        "patients": root / "patients.csv.gz",
        "admissions": root / "admissions.csv.gz",
    }
    pd.DataFrame(meta).to_csv(files["metadata"], index=False)
    pd.DataFrame(labels).to_csv(files["chexpert"], index=False)
    pd.DataFrame(pats).to_csv(files["patients"], index=False)
    pd.DataFrame(adms).to_csv(files["admissions"], index=False)
    return files, expect


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("mimic")
    files, expect = make_mimic_tree(root)
    return root, files, expect


def test_paper_exclusions_and_consort_counts(tree):
    root, files, expect = tree
    df, side = index_dataset("mimic", list(files.values()), root,
                             config=IndexConfig(views="PA"), progress=False)
    steps = {s["step"]: s["removed"] for s in side["exclusions"]}
    assert side["exclusions"][0]["remaining"] == 2 * (expect["lateral"])  # PA + LATERAL
    assert steps["view not in ['PA']"] == expect["lateral"]
    assert steps["report missing"] == expect["report"]
    assert steps["impression section missing"] == expect["impression"]
    assert steps["non-descriptive impression"] == expect["nondesc"]
    assert steps["sex or age missing"] == expect["demo"]
    assert steps["race outside Asian/Black/Hispanic/White"] == expect["race"]
    assert len(df) == expect["kept"] == side["exclusions"][-1]["remaining"]
    assert min(expect[k] for k in expect) > 0  # every step is exercised
    assert set(df["view"]) == {"PA"}
    assert set(df["race"]) <= {"Asian", "Black", "Hispanic", "White"}
    assert df["impression"].eq("No acute cardiopulmonary process.").all()
    assert df["report"].str.contains("FINDINGS").all()
    # paths follow the official layout and exist
    assert all((root / p).is_file() for p in df["path"])
    assert df["path"].str.match(r"files/p1\d/p1\d{7}/s\d+/[^/]+\.jpg$").all()


def test_split_p19_test_and_patient_disjoint(tree):
    root, files, _ = tree
    cfg = IndexConfig(views="PA", val_fraction=0.25, seed=3)
    df, side = index_dataset("mimic", list(files.values()), root, config=cfg, progress=False)
    folder = df["path"].str.slice(6, 9)
    assert (df.loc[folder == "p19", "split"] == "test").all()
    assert (df.loc[folder != "p19", "split"] != "test").all()
    by_split = df.groupby("split")["patient_id"].apply(set)
    assert not (by_split["train"] & by_split["validate"])
    assert not (by_split["train"] & by_split["test"])
    n_pat = df.loc[folder != "p19", "patient_id"].nunique()
    assert len(by_split["validate"]) == round(0.25 * n_pat)
    assert side["split"]["patients"]["validate"] == len(by_split["validate"])
    # seeded: same seed same split, other seed another split
    df2, _ = index_dataset("mimic", list(files.values()), root, config=cfg, progress=False)
    assert df2["split"].tolist() == df["split"].tolist()
    df3, _ = index_dataset("mimic", list(files.values()), root,
                           config=IndexConfig(views="PA", val_fraction=0.25, seed=4),
                           progress=False)
    assert df3["split"].tolist() != df["split"].tolist()


def test_demographics_race_age_and_labels(tree):
    root, files, _ = tree
    df, _ = index_dataset("mimic", list(files.values()), root,
                          config=IndexConfig(paper_exclusions=False, no_finding_rule=False),
                          progress=False)
    assert len(df) == len(pd.read_csv(files["metadata"]))  # all views kept, nothing excluded
    one = df.set_index("image_id")
    # subject 1x000002 (asian, with an UNKNOWN admission ignored); k=1 -> F, anchor age 35
    row = df[df["patient_id"] == "10000001"].iloc[0]
    assert row["race"] == "Black" and row["sex"] == "F"
    assert row["age"] == 35 + (2152 - 2150) and row["age_bin"] == "18-40"
    assert set(df.loc[df["patient_id"] == "10000002", "race"]) == {"Asian"}
    assert set(df.loc[df["patient_id"] == "15000005", "race"]) == {"Other"}  # mixed
    assert df.loc[df["patient_id"] == "16000005", "race"].isna().all()      # unknown
    assert df.loc[df["patient_id"] == "12000003", "sex"].isna().all()       # no patients row
    # labels are the chexpert file's values, per study
    lab = pd.read_csv(files["chexpert"]).set_index("study_id")
    for _, r in df.sample(10, random_state=0).iterrows():
        for c in CHEXPERT_LABELS:
            a, b = r[c], lab.at[int(r["study_id"]), c]
            assert (np.isnan(a) and np.isnan(b)) or a == b
    assert one.index.is_unique


def test_cli_verify_files_and_stats(tree, tmp_path):
    from rv2.cli import main

    root, files, expect = tree
    # damage two kept images: one missing, one truncated
    df, _ = index_dataset("mimic", list(files.values()), root, config=IndexConfig(views="PA"),
                          progress=False)
    p_missing, p_trunc = root / df["path"].iloc[0], root / df["path"].iloc[1]
    data_missing = p_missing.read_bytes()
    p_missing.unlink()
    good = p_trunc.read_bytes()
    p_trunc.write_bytes(good[: len(good) // 2])
    try:
        out = tmp_path / "m.parquet"
        args = ["data", "index", "--dataset", "mimic", "--root", str(root), "--views", "PA",
                "--verify-files", "--quiet", "--out", str(out), "--set", "val_fraction=0.2"]
        for f in files.values():
            args += ["--metadata", str(f)]
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, res.output
        assert "non-descriptive impression" in res.output and "file not found" in res.output
        m = read_manifest(out)
        assert len(m) == expect["kept"] - 2
        side = read_sidecar(out)
        reasons = {b["path"]: b["reason"] for b in side["bad_files"]}
        assert len(reasons) == 2
        assert reasons[df["path"].iloc[0]] == "file not found"
        assert any(w in reasons[df["path"].iloc[1]] for w in ("truncated", "corrupt"))
        assert side["exclusions"][-1]["step"] == "image missing, unreadable or corrupt"
        assert "uncertain_label_policy" not in side and "label_policy" in side["label_values"]
        meta = json.loads((tmp_path / "m.parquet.rv2.json").read_text())
        assert meta["config"]["val_fraction"] == 0.2 and len(meta["inputs"]) == 4

        res = CliRunner().invoke(main, ["data", "stats", str(out)])
        assert res.exit_code == 0, res.output
        demo = pd.read_csv(tmp_path / "m_stats" / "demographics.csv")
        for split, part in m.groupby("split"):
            d = demo[(demo["split"] == split) & (demo["variable"] == "sex")]
            assert d["n"].sum() == len(part)
            assert abs(d["pct"].sum() - 100) < 0.1
            assert d.set_index("level")["n"].to_dict() == part["sex"].value_counts().to_dict()
        inter = pd.read_csv(tmp_path / "m_stats" / "intersectional.csv")
        sr = inter[(inter["split"] == "all") & (inter["pair"] == "sex x race")]
        assert sr["n"].sum() == len(m)
        k = sr[(sr["sex"] == "F") & (sr["level"] == "Black")]["n"].item()
        assert k == ((m["sex"] == "F") & (m["race"] == "Black")).sum()
    finally:
        p_missing.write_bytes(data_missing)
        p_trunc.write_bytes(good)


def test_bad_inputs_are_named(tree, tmp_path):
    root, files, _ = tree
    with pytest.raises(ValueError, match="missing input"):
        index_dataset("mimic", [files["metadata"]], root, progress=False)
    junk = tmp_path / "junk.csv"
    junk.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="junk.csv"):
        index_dataset("mimic", [*files.values(), junk], root, progress=False)
    with pytest.raises(ValueError, match="--views"):
        index_dataset("mimic", list(files.values()), root, config=IndexConfig(views="XX"))


def test_index_config_v1_with_uncertain_policy_still_loads(tmp_path):
    """A v1 index config recorded uncertain_policy, which nothing applied: it loads without it;
    a current config naming it is refused as an unknown field."""
    from rv2.config import ConfigError

    v1 = {"config_class": "IndexConfig", "config_version": 1, "dataset": "chexpert",
          "uncertain_policy": "zeros", "views": "PA"}
    cfg = IndexConfig.from_dict(v1)
    assert cfg.dataset == "chexpert" and cfg.views == "PA"
    assert "uncertain_policy" not in cfg.to_dict() and cfg.to_dict()["config_version"] == 2
    with pytest.raises(ConfigError, match="uncertain_policy"):
        IndexConfig.from_dict({**v1, "config_version": 2})
