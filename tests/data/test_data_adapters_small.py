"""Adapters on small files written here in each source's published column layout."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from rv2.data import labels as lab
from rv2.data.config import IndexConfig
from rv2.data.index import index_dataset
from rv2.data.schema import CHEXPERT_LABELS


def test_view_sex_race_rules():
    assert [lab.normalize_view(v) for v in ("PA", "POSTEROANTERIOR", "ap", "LATERAL", "L", "LL",
                                            "AP_horizontal", "COSTAL", "", None, np.nan)] == \
        ["PA", "PA", "AP", "LATERAL", "LATERAL", "LL", "AP_HORIZONTAL", "OTHER", None, None, None]
    assert [lab.normalize_sex(v) for v in ("Female", "M", "O", "Unknown", None)] == \
        ["F", "M", None, None, None]
    assert lab.parse_views("all") is None and lab.parse_views("PA,ap") == {"PA", "AP"}
    with pytest.raises(ValueError, match="not a view"):
        lab.parse_views("PA,frontal")
    m = lab.mimic_race_group
    assert [m(v) for v in ("WHITE - RUSSIAN", "BLACK/CAPE VERDEAN", "ASIAN - KOREAN",
                           "HISPANIC OR LATINO", "SOUTH AMERICAN", "PORTUGUESE",
                           "MULTIPLE RACE/ETHNICITY", "UNKNOWN", "PATIENT DECLINED TO ANSWER",
                           None)] == \
        ["White", "Black", "Asian", "Hispanic", "Hispanic", "Other", "Other", None, None, None]
    adm = pd.DataFrame({"subject_id": [1, 1, 2, 2, 3, 4],
                        "race": ["WHITE", "UNKNOWN", "WHITE", "ASIAN", "UNABLE TO OBTAIN",
                                 "BLACK/AFRICAN"]})
    assert lab.collapse_race_per_subject(adm, "race").to_dict() == {1: "White", 2: "Other",
                                                                     4: "Black"}
    c = lab.chexpert_race_group
    assert c("White", "Hispanic/Latino") == "Hispanic"
    assert c("White, non-Hispanic", "Non-Hispanic/Non-Latino") == "White"
    assert c("Black or African American", None) == "Black"
    assert c("Asian, Hispanic", None) == "Hispanic"
    assert c("Native Hawaiian or Other Pacific Islander", "Non-Hispanic/Non-Latino") == "Other"
    assert c("Unknown", "Unknown") is None and c("Patient Refused", None) is None


def test_no_finding_rule_fills_blanks_only():
    df = lab.empty_labels(3)
    df["No Finding"] = [1.0, 1.0, np.nan]
    df["Cardiomegaly"] = [np.nan, 1.0, np.nan]
    df["Support Devices"] = [np.nan, np.nan, 1.0]
    info = lab.apply_no_finding_rule(df)
    assert df["Cardiomegaly"].tolist()[:2] == [0.0, 1.0]  # explicit positive kept
    assert np.isnan(df["Support Devices"][0])             # devices are exempt
    assert np.isnan(df["Edema"][2])                       # row without No Finding untouched
    assert info["positive_or_uncertain_findings_kept_despite_no_finding"] == 1
    assert info["blank_findings_set_to_0"] == 2 * 12 - 1
    # the other direction: a positive finding makes a blank No Finding 0; devices do not
    df = lab.empty_labels(4)
    df["Edema"] = [1.0, -1.0, np.nan, np.nan]
    df["Support Devices"] = [np.nan, np.nan, 1.0, np.nan]
    info = lab.apply_no_finding_rule(df)
    assert df["No Finding"].tolist()[0] == 0.0
    assert np.isnan(df["No Finding"].tolist()[1:]).all()  # uncertain, device-only, empty rows
    assert info["blank_no_finding_set_to_0_on_positive_finding"] == 1


def test_chexpert_valid_and_demographics(tmp_path):
    rows = [
        ("CheXpert-v1.0/valid/patient64541/study1/view1_frontal.jpg", "Male", 73, "Frontal", "AP"),
        ("CheXpert-v1.0/valid/patient64542/study1/view2_lateral.jpg", "Female", 70, "Lateral", ""),
        ("CheXpert-v1.0/valid/patient64543/study1/view1_frontal.jpg", "Unknown", 0, "Frontal",
         "PA"),
    ]
    v = pd.DataFrame(rows, columns=["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"])
    for c in CHEXPERT_LABELS:
        v[c] = [1.0, 0.0, np.nan]
    v.to_csv(tmp_path / "valid.csv", index=False)
    pd.DataFrame({"PATIENT": ["patient64541", "patient64542", "patient64543"],
                  "GENDER": ["Male", "Female", "Unknown"],
                  "AGE_AT_CXR": [73, 70, 40],
                  "PRIMARY_RACE": ["White, non-Hispanic", "Asian", "Other"],
                  "ETHNICITY": ["Non-Hispanic/Non-Latino", "Non-Hispanic/Non-Latino",
                                "Hispanic/Latino"]}).to_csv(tmp_path / "demo.csv", index=False)
    df, side = index_dataset("chexpert", [tmp_path / "valid.csv", tmp_path / "demo.csv"],
                             progress=False)
    assert df["split"].tolist() == ["validate"] * 3
    assert df["view"].tolist() == ["AP", "LATERAL", "PA"]
    assert df["sex"].tolist()[:2] == ["F", "M"][::-1] and pd.isna(df["sex"][2])
    assert pd.isna(df["age"][2])  # CheXpert's 0 = unknown
    assert df["race"].tolist() == ["White", "Asian", "Hispanic"]
    assert df["image_id"][0] == "patient64541/study1/view1_frontal"
    assert df["study_id"][0] == "patient64541/study1"
    # the sidecar states the view filter and the views present
    assert side["views"] == "all" and side["view_filter"].startswith("all views kept")
    assert side["views_present"] == {"AP": 1, "LATERAL": 1, "PA": 1}
    d2, s2 = index_dataset("chexpert", [tmp_path / "valid.csv"], config=IndexConfig(views="PA,AP"),
                           progress=False)
    assert len(d2) == 2
    assert s2["view_filter"] == "kept views ['AP', 'PA']" and s2["views_present"] == {"AP": 1, "PA": 1}


def test_chexpert_plus(tmp_path):
    main = pd.DataFrame({
        "path_to_image": ["train/patient00001/study1/view1_frontal.jpg",
                          "train/patient00001/study1/view2_lateral.jpg",
                          "valid/patient64541/study1/view1_frontal.jpg"],
        "path_to_dcm": ["a.dcm", "b.dcm", "c.dcm"], "age": [68, 68, 73],
        "sex": ["Female", "Female", "Male"],
        "race": ["Black or African American", "Black or African American", "White"],
        "ethnicity": ["Non-Hispanic/Non-Latino"] * 2 + ["Hispanic/Latino"],
        "split": ["train", "train", "valid"], "frontal_lateral": ["Frontal", "Lateral", "Frontal"],
        "ap_pa": ["AP", None, "PA"], "deid_patient_id": ["p1", "p1", "p2"],
        "report": ["FINDINGS: clear. IMPRESSION: Normal.", "FINDINGS: clear. IMPRESSION: Normal.",
                   None],
        "section_findings": ["clear.", "clear.", "Small effusion."],
        "section_impression": ["Normal.", "Normal.", None],
    })
    main.to_csv(tmp_path / "df_chexpert_plus_240401.csv", index=False)
    labels = pd.DataFrame({"path_to_image": main["path_to_image"]})
    for c in CHEXPERT_LABELS:
        labels[c] = [np.nan, np.nan, -1.0]
    labels["No Finding"] = [1.0, 1.0, np.nan]
    labels.to_csv(tmp_path / "labels.csv", index=False)
    df, _ = index_dataset("chexpert-plus", [tmp_path / "df_chexpert_plus_240401.csv",
                                            tmp_path / "labels.csv"], progress=False)
    assert df["split"].tolist() == ["train", "train", "validate"]
    assert df["view"].tolist() == ["AP", "LATERAL", "PA"]
    assert df["race"].tolist() == ["Black", "Black", "Hispanic"]
    assert df["impression"].tolist()[:2] == ["Normal.", "Normal."] and pd.isna(df["impression"][2])
    assert df["patient_id"].tolist() == ["p1", "p1", "p2"]
    assert df["Edema"].tolist()[:2] == [0.0, 0.0] and df["Edema"][2] == -1.0  # NF rule, raw -1


def test_vindr_physionet_labels(tmp_path):
    cols = ["image_id", "rad_id", "Aortic enlargement", "Atelectasis", "Cardiomegaly", "Edema",
            "Pleural effusion", "Pneumonia", "Pneumothorax", "Consolidation", "No finding"]
    tr = pd.DataFrame([["a", "R1", 0, 1, 0, 0, 0, 0, 0, 0, 0],
                       ["a", "R2", 0, 0, 0, 0, 0, 0, 0, 0, 1],
                       ["a", "R3", 0, 0, 0, 0, 0, 0, 0, 0, 1],
                       ["b", "R1", 0, 0, 0, 1, 0, 1, 0, 0, 0],
                       ["b", "R2", 0, 0, 0, 1, 0, 0, 0, 0, 0],
                       ["b", "R3", 0, 0, 0, 0, 0, 0, 0, 0, 1]], columns=cols)
    tr.to_csv(tmp_path / "image_labels_train.csv", index=False)
    te = pd.DataFrame([["c", "R8", 0, 0, 1, 0, 0, 0, 0, 0, 0]], columns=cols)
    te.to_csv(tmp_path / "image_labels_test.csv", index=False)
    files = [tmp_path / "image_labels_train.csv", tmp_path / "image_labels_test.csv"]
    df, _ = index_dataset("vindr", files, progress=False)
    d = df.set_index("image_id")
    assert d.loc["a", "Atelectasis"] == 1 and d.loc["a", "No Finding"] == 0   # any reader
    assert d.loc["b", "Edema"] == 1 and d.loc["b", "Pneumonia"] == 1
    assert d.loc["c", "split"] == "test" and d.loc["c", "path"] == "test/c.dicom"
    maj, _ = index_dataset("vindr", files, config=IndexConfig(vindr_aggregate="majority"),
                           progress=False)
    m = maj.set_index("image_id")
    assert m.loc["a", "Atelectasis"] == 0 and m.loc["b", "Edema"] == 1 and \
        m.loc["b", "Pneumonia"] == 0


def test_nih_verify_files_locates_images_and_lists_bad_ones(tmp_path, real_cxr):
    raw = pd.DataFrame({
        "Image Index": ["00000001_000.png", "00027426_000.png", "00000002_000.png",
                        "00000003_000.png"],
        "Finding Labels": ["Cardiomegaly", "No Finding", "Effusion|Mass", "No Finding"],
        "Follow-up #": [0, 0, 0, 0], "Patient ID": [1, 27426, 2, 3],
        "Patient Age": [57, 53, 81, 30], "Patient Sex": ["M", "M", "F", "F"],
        "View Position": ["PA", "PA", "AP", "PA"]})
    raw.to_csv(tmp_path / "Data_Entry_2017.csv", index=False)
    root = tmp_path / "nih"
    (root / "images_001" / "images").mkdir(parents=True)  # the Kaggle layout
    for n in raw["Image Index"][:2]:
        (root / "images_001" / "images" / n).write_bytes((real_cxr / n).read_bytes())
    (root / "images_001" / "images" / "00000002_000.png").write_text("not a png")
    df, side = index_dataset("nih", [tmp_path / "Data_Entry_2017.csv"], root,
                             config=IndexConfig(verify_files=True), progress=False)
    assert df["image_id"].tolist() == ["00000001_000", "00027426_000"]
    assert df["path"].tolist()[0] == "images_001/images/00000001_000.png"
    assert side["paths_located_by_name"] == 3
    reasons = {b["image_id"]: b["reason"] for b in side["bad_files"]}
    assert "not a recognised image" in reasons["00000002_000"]
    assert reasons["00000003_000"] == "file not found"
    assert side["bad_file_reasons"] == {"not a recognised image (expected PNG, JPEG or DICOM)": 1,
                                        "file not found": 1}
    assert df["sex"].tolist() == ["M", "M"] and df["Pleural Effusion"].tolist() == [0.0, 0.0]


def test_openi_xml_folder(tmp_path):
    xml = """<?xml version="1.0" encoding="utf-8"?><eCitation><uId id="CXR9"/>
    <MedlineCitation><Article><Abstract>
    <AbstractText Label="FINDINGS">Heart is enlarged.</AbstractText>
    <AbstractText Label="IMPRESSION">Cardiomegaly.</AbstractText></Abstract></Article>
    </MedlineCitation><MeSH><major>Cardiomegaly/mild</major><major>Pleural Effusion/left</major>
    </MeSH><parentImage id="CXR9_IM-2-1001"/><parentImage id="CXR9_IM-2-2001"/></eCitation>"""
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "9.xml").write_text(xml)
    (tmp_path / "x" / "10.xml").write_text(xml.replace("CXR9", "CXR10").replace(
        "<parentImage id=\"CXR10_IM-2-1001\"/><parentImage id=\"CXR10_IM-2-2001\"/>", ""))
    df, side = index_dataset("openi", [tmp_path / "x"], progress=False)
    assert df["image_id"].tolist() == ["CXR9_IM-2-1001", "CXR9_IM-2-2001"]
    assert side["reports_without_images"] == 1
    assert (df["Cardiomegaly"] == 1).all() and (df["Pleural Effusion"] == 1).all()
    assert (df["No Finding"] == 0).all() and df["impression"].eq("Cardiomegaly.").all()


def test_conform_types_empty_and_age_bin():
    from rv2.data.manifest import conform, validate
    from rv2.data.schema import REQUIRED_COLUMNS

    empty = conform(pd.DataFrame(columns=list(REQUIRED_COLUMNS)))
    validate(empty)
    assert len(empty) == 0 and list(empty.columns[:len(REQUIRED_COLUMNS)]) == \
        list(REQUIRED_COLUMNS)
    df = conform(pd.DataFrame({"image_id": ["a", "b", "c"], "age": [17.9, np.nan, "80"],
                               "age_bin": [None, "60-80", None], "sex": ["F", None, np.nan],
                               "extra": [1, 2, 3]}), dataset="x")
    assert df["age_bin"].tolist()[0] == "<18" and df["age_bin"][1] == "60-80"
    assert df["age_bin"][2] == "80+" and df["age"].dtype == np.float64
    assert df["sex"].isna().tolist() == [False, True, True]
    assert list(df.columns)[-1] == "extra" and (df["dataset"] == "x").all()
    assert str(df["image_id"].dtype) == "string"
