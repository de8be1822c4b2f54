"""Adapters for CheXpert, CheXpert Plus, NIH ChestX-ray14, PadChest, VinDr-CXR and OpenI.

Each `index_X(files, root, cfg, progress=)` returns (rows, Flow, sidecar extras)
with the manifest's columns; `rv2.data.index.index_dataset` does the rest
(view filter, No Finding rule, file checks). Label mappings are in
`rv2.data.labels`; datasets without race leave it null.
"""
from __future__ import annotations

import ast
import io
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd

from rv2.data import labels as lab
from rv2.data.index import Flow, IndexConfig, read_header, read_table
from rv2.data.schema import CHEXPERT_LABELS


def _none(v):
    return None if v is None or (isinstance(v, float) and v != v) else v


# ------------------------------------------------------------------ CheXpert

def _chexpert_demographics(f: Path) -> pd.Series:
    demo = read_table(f)
    pid = "PATIENT" if "PATIENT" in demo else "patient_id"
    race = demo.get("PRIMARY_RACE", demo.get("race"))
    eth = demo.get("ETHNICITY", demo.get("ethnicity"))
    groups = [lab.chexpert_race_group(r, e) for r, e in
              zip(race.to_numpy(dtype=object),
                  (eth if eth is not None else pd.Series([None] * len(demo))).to_numpy(dtype=object))]
    return pd.Series(groups, index=demo[pid].astype(str).to_numpy()).groupby(level=0).first()


def index_chexpert(files, root, cfg: IndexConfig, *, progress=True):
    parts, demo = [], None
    for f in files:
        cols = set(read_header(f))
        if "Path" in cols and "Frontal/Lateral" in cols:
            parts.append(read_table(f))
        elif "PRIMARY_RACE" in cols or ("PATIENT" in cols and "race" in {c.lower() for c in cols}):
            demo = _chexpert_demographics(f)
        else:
            raise ValueError(f"chexpert: {f} is neither train.csv/valid.csv (Path, Sex, Age, "
                             "Frontal/Lateral, AP/PA, labels) nor the demographics table "
                             "(PATIENT, PRIMARY_RACE, ETHNICITY)")
    if not parts:
        raise ValueError("chexpert: pass train.csv and/or valid.csv with --metadata")
    raw = pd.concat(parts, ignore_index=True)
    path = raw["Path"].astype(str)
    m = path.str.extract(r"(?P<split>train|valid|test)/(?P<patient>patient\d+)/(?P<study>study\d+)/")
    df = pd.DataFrame({
        "image_id": path.str.replace(r"^.*?(?=patient\d+/)", "", regex=True)
                        .str.replace(r"\.(jpg|png)$", "", regex=True).to_numpy(),
        "path": path.to_numpy(),
        "patient_id": m["patient"].to_numpy(),
        "study_id": (m["patient"] + "/" + m["study"]).to_numpy(),
        "sex": [lab.normalize_sex(v) for v in raw["Sex"].to_numpy(dtype=object)],
        "age": pd.to_numeric(raw["Age"], errors="coerce").to_numpy(dtype=float),
        "split": m["split"].map({"train": "train", "valid": "validate", "test": "test"})
                           .fillna(cfg.default_split).to_numpy(),
    })
    lateral = raw["Frontal/Lateral"].astype(str).str.lower().eq("lateral").to_numpy()
    appa = raw["AP/PA"].to_numpy(dtype=object)
    df["view"] = ["LATERAL" if lat else lab.normalize_view(v) for lat, v in zip(lateral, appa)]
    # CheXpert records unknown age as 0 in a few rows
    df.loc[df["age"] <= 0, "age"] = np.nan
    for c in CHEXPERT_LABELS:
        df[c] = pd.to_numeric(raw[c], errors="coerce").to_numpy(dtype=float)
    df["race"] = (demo.reindex(df["patient_id"].to_numpy()).to_numpy(dtype=object)
                  if demo is not None else None)
    return df, Flow(df, "images in CheXpert CSV(s)"), {"race_source": "demographics table"
                                                        if demo is not None else None}


def index_chexpert_plus(files, root, cfg: IndexConfig, *, progress=True):
    main, extra_labels = None, None
    for f in files:
        cols = set(read_header(f))
        if "path_to_image" in cols and ("section_impression" in cols or "deid_patient_id" in cols):
            main = read_table(f)
        elif "path_to_image" in cols and set(CHEXPERT_LABELS) & cols:
            extra_labels = read_table(f).drop_duplicates("path_to_image").set_index("path_to_image")
        else:
            raise ValueError(f"chexpert-plus: {f} is not df_chexpert_plus_*.csv (path_to_image, "
                             "deid_patient_id, section_impression, ...) nor a label CSV keyed by "
                             "path_to_image")
    if main is None:
        raise ValueError("chexpert-plus: pass df_chexpert_plus_240401.csv with --metadata")
    path = main["path_to_image"].astype(str)
    study = path.str.extract(r"(patient\d+/study\d+)/")[0]
    df = pd.DataFrame({
        "image_id": path.str.replace(r"\.(jpg|png)$", "", regex=True).to_numpy(),
        "path": path.to_numpy(),
        "patient_id": main["deid_patient_id"].astype(str).to_numpy() if "deid_patient_id" in main
        else path.str.extract(r"(patient\d+)")[0].to_numpy(),
        "study_id": study.to_numpy(),
        "sex": [lab.normalize_sex(v) for v in main.get("sex", pd.Series([None] * len(main)))
                .to_numpy(dtype=object)],
        "age": pd.to_numeric(main.get("age", pd.Series([np.nan] * len(main))),
                             errors="coerce").to_numpy(dtype=float),
    })
    fl = main.get("frontal_lateral", pd.Series([None] * len(main))).astype(str).str.lower()
    df["view"] = ["LATERAL" if f == "lateral" else lab.normalize_view(v)
                  for f, v in zip(fl, main.get("ap_pa", pd.Series([None] * len(main)))
                                  .to_numpy(dtype=object))]
    df["race"] = [lab.chexpert_race_group(r, e) for r, e in zip(
        main.get("race", pd.Series([None] * len(main))).to_numpy(dtype=object),
        main.get("ethnicity", pd.Series([None] * len(main))).to_numpy(dtype=object))]
    sp = main.get("split", pd.Series([None] * len(main))).astype("string").str.lower()
    df["split"] = sp.map({"train": "train", "valid": "validate", "validate": "validate",
                          "val": "validate", "test": "test"}).fillna(cfg.default_split).to_numpy()
    df["impression"] = [_none(v) for v in main.get("section_impression", pd.Series(
        [None] * len(main))).to_numpy(dtype=object)]
    if "report" in main:
        df["report"] = [_none(v) for v in main["report"].to_numpy(dtype=object)]
    else:
        secs = [c for c in main.columns if c.startswith("section_")]
        df["report"] = ["\n\n".join(f"{c[8:].upper()}: {main.at[i, c]}" for c in secs
                                    if _none(main.at[i, c]) is not None) or None
                        for i in range(len(main))]
    src = main if set(CHEXPERT_LABELS) <= set(main.columns) else (
        extra_labels.reindex(path.to_numpy()).reset_index(drop=True)
        if extra_labels is not None else None)
    for c in CHEXPERT_LABELS:
        df[c] = (pd.to_numeric(src[c], errors="coerce").to_numpy(dtype=float)
                 if src is not None and c in src else np.nan)
    return df, Flow(df, "images in CheXpert Plus CSV"), {}


# ------------------------------------------------------------------ NIH

def index_nih(files, root, cfg: IndexConfig, *, progress=True):
    raw, test_list, trainval = None, None, None
    for f in files:
        if f.suffix == ".txt":
            names = {ln.strip() for ln in f.read_text().splitlines() if ln.strip()}
            if "test" in f.name.lower():
                test_list = names
            else:
                trainval = names
            continue
        cols = set(read_header(f))
        if {"Image Index", "Finding Labels"} <= cols:
            raw = read_table(f)
        else:
            raise ValueError(f"nih: {f} is not Data_Entry_2017*.csv (Image Index, Finding Labels, "
                             "...) nor test_list.txt / train_val_list.txt")
    if raw is None:
        raise ValueError("nih: pass Data_Entry_2017_v2020.csv with --metadata")
    names = raw["Image Index"].astype(str)
    sex_col = "Patient Gender" if "Patient Gender" in raw else "Patient Sex"
    df = pd.DataFrame({
        "image_id": names.str.replace(r"\.png$", "", regex=True).to_numpy(),
        "path": ("images/" + names).to_numpy(),
        "patient_id": raw["Patient ID"].astype(str).to_numpy(),
        # one study per follow-up visit
        "study_id": (raw["Patient ID"].astype(str) + "_" + raw["Follow-up #"].astype(str))
        .to_numpy(),
        "view": [lab.normalize_view(v) for v in raw["View Position"].to_numpy(dtype=object)],
        "sex": [lab.normalize_sex(v) for v in raw[sex_col].to_numpy(dtype=object)],
        "age": pd.to_numeric(raw["Patient Age"], errors="coerce").to_numpy(dtype=float),
        "race": None,
        "source_labels": raw["Finding Labels"].astype(str).to_numpy(),
    })
    sets = [{lab.NIH_LABELS[x] for x in s.split("|") if x in lab.NIH_LABELS}
            for s in raw["Finding Labels"].astype(str)]
    labs = lab.labels_from_sets(sets, tuple(sorted(set(lab.NIH_LABELS.values()))))
    for c in CHEXPERT_LABELS:
        df[c] = labs[c].to_numpy()
    if test_list is not None or trainval is not None:
        # hash-based lookups (np.isin on object arrays is quadratic)
        df["split"] = np.where(names.isin(test_list or set()).to_numpy(), "test",
                               np.where(names.isin(trainval or set()).to_numpy(), "train", None))
        split_src = "test_list.txt / train_val_list.txt"
    else:
        df["split"] = cfg.default_split
        split_src = f"default_split={cfg.default_split}"
    return df, Flow(df, "images in NIH Data_Entry CSV"), {"split_source": split_src}


# ------------------------------------------------------------------ PadChest

def parse_padchest_labels(s) -> list[str] | None:
    """The Labels cell (a Python list literal) as stripped lower-case strings; None if absent."""
    if s is None or (isinstance(s, float) and s != s):
        return None
    try:
        items = ast.literal_eval(str(s))
    except (ValueError, SyntaxError):
        return None
    if not isinstance(items, (list, tuple)):
        return None
    return [str(x).strip().lower() for x in items if str(x).strip()]


def padchest_findings(items: list[str] | None) -> set[str] | None:
    if items is None:
        return None
    out = {c for c, pat in lab.PADCHEST_PATTERNS.items() if any(pat.search(x) for x in items)}
    if items == ["normal"]:
        out.add("No Finding")
    return out


def index_padchest(files, root, cfg: IndexConfig, *, progress=True):
    if len(files) != 1:
        raise ValueError("padchest: pass the one PADCHEST_chest_x_ray_images_labels_160K CSV")
    raw = read_table(files[0])
    need = {"ImageID", "ImageDir", "PatientID", "Labels", "Projection"}
    if not need <= set(raw.columns):
        raise ValueError(f"padchest: {files[0]} lacks columns {sorted(need - set(raw.columns))}")
    birth = pd.to_numeric(raw.get("PatientBirth"), errors="coerce")
    year = pd.to_numeric(raw.get("StudyDate_DICOM"), errors="coerce") // 10000
    # many rows share a Labels string (a third are ['normal']): parse each distinct one once
    cells = raw["Labels"].to_numpy(dtype=object)
    cache: dict = {}
    sets = []
    for cell in cells:
        key = None if cell is None or (isinstance(cell, float) and cell != cell) else cell
        if key not in cache:
            cache[key] = padchest_findings(parse_padchest_labels(key))
        sets.append(cache[key])
    labs = lab.labels_from_sets(sets, tuple(lab.PADCHEST_PATTERNS) + ("No Finding",))
    imgdir = pd.to_numeric(raw["ImageDir"], errors="coerce").astype("Int64").astype(str)
    df = pd.DataFrame({
        "image_id": raw["ImageID"].astype(str).to_numpy(),
        "path": (imgdir + "/" + raw["ImageID"].astype(str)).to_numpy(),
        "patient_id": raw["PatientID"].astype(str).to_numpy(),
        "study_id": raw["StudyID"].astype(str).to_numpy() if "StudyID" in raw else None,
        "view": [lab.normalize_view(v) for v in raw["Projection"].to_numpy(dtype=object)],
        "sex": [lab.normalize_sex(v) for v in raw["PatientSex_DICOM"].to_numpy(dtype=object)],
        "age": (year - birth).to_numpy(dtype=float),
        "race": None,
        "split": cfg.default_split,
        "report": [_none(v) for v in raw["Report"].to_numpy(dtype=object)]
        if "Report" in raw else None,
        "source_labels": raw["Labels"].astype("string").to_numpy(),
        "label_method": raw["MethodLabel"].astype("string").to_numpy()
        if "MethodLabel" in raw else None,
    })
    for c in CHEXPERT_LABELS:
        df[c] = labs[c].to_numpy()
    # COSTAL / EXCLUDE projections are not chest views of the lungs' usual kind: OTHER
    return df, Flow(df, "images in PadChest CSV"), {
        "labels_rule": "Labels list items matched per class (rv2.data.labels.PADCHEST_PATTERNS); "
                       "No Finding = exactly ['normal']; unparsable Labels -> all NaN"}


# ------------------------------------------------------------------ VinDr

def index_vindr(files, root, cfg: IndexConfig, *, progress=True):
    frames = []
    kaggle = False
    for f in files:
        cols = set(read_header(f))
        split = "test" if "test" in f.name.lower() else "train"
        raw = read_table(f)
        if {"image_id", "class_name"} <= cols:  # Kaggle: one row per reader x finding
            kaggle = True
            names = raw["class_name"].astype(str)
            per = pd.DataFrame({"image_id": raw["image_id"].astype(str),
                                "rad_id": raw.get("rad_id", pd.Series(["R"] * len(raw))).astype(str)})
            for src, dst in lab.VINDR_LABELS.items():
                per[dst] = (names == src).astype(float)
            # a reader's vote per image: any of their boxes
            per = per.groupby(["image_id", "rad_id"], sort=False).max().reset_index()
        elif {"image_id", "rad_id"} <= cols:  # PhysioNet image_labels: one row per reader
            per = pd.DataFrame({"image_id": raw["image_id"].astype(str),
                                "rad_id": raw["rad_id"].astype(str)})
            for src, dst in lab.VINDR_LABELS.items():
                col = next((c for c in raw.columns if c.lower() == src.lower()), None)
                per[dst] = (pd.to_numeric(raw[col], errors="coerce").to_numpy(dtype=float)
                            if col is not None else np.nan)
        else:
            raise ValueError(f"vindr: {f} is neither the Kaggle train.csv (image_id, class_name, "
                             "rad_id, boxes) nor PhysioNet image_labels_*.csv")
        per["split"] = split
        frames.append(per)
    per = pd.concat(frames, ignore_index=True)
    classes = sorted(set(lab.VINDR_LABELS.values()))
    g = per.groupby("image_id", sort=False)
    if cfg.vindr_aggregate == "any":
        agg = g[classes].max()
    else:
        agg = (g[classes].mean() > 0.5).astype(float).where(g[classes].count() > 0)
    split = g["split"].first()
    if kaggle:  # the Kaggle file has no Edema / Pneumonia
        for c in lab.VINDR_KAGGLE_ONLY_MISSING:
            agg[c] = np.nan
    # a finding of any reader overrides "No finding" of another
    findings = [c for c in classes if c != "No Finding"]
    any_finding = (agg[findings] == 1).any(axis=1)
    agg["No Finding"] = np.where(any_finding, 0.0, agg["No Finding"])
    ids = agg.index.to_numpy()
    df = pd.DataFrame({"image_id": ids,
                       "path": [f"{s}/{i}.dicom" for s, i in zip(split.to_numpy(), ids)],
                       "patient_id": ids, "study_id": ids, "view": None, "sex": None,
                       "age": np.nan, "race": None,
                       "split": split.to_numpy(),
                       "readers": g["rad_id"].nunique().to_numpy()})
    for c in CHEXPERT_LABELS:
        df[c] = agg[c].to_numpy(dtype=float) if c in agg else np.nan
    return df, Flow(df, "images in VinDr label file(s)"), {
        "reader_aggregate": cfg.vindr_aggregate,
        "note": "VinDr has no patient id or demographics in its label files: patient_id = "
                "image_id; view, sex and age are null (the paper does no subgroup analysis)"}


# ------------------------------------------------------------------ OpenI

def _iter_openi_xml(src: Path):
    if src.is_dir():
        for f in sorted(src.rglob("*.xml")):
            yield f.stem, f.read_text(errors="replace")
        return
    with tarfile.open(src, "r:*") as tar:
        for m in tar:
            if m.isfile() and m.name.endswith(".xml"):
                yield Path(m.name).stem, tar.extractfile(m).read().decode("utf-8", "replace")


def openi_mesh_findings(major_terms: list[str]) -> set[str]:
    heads = [t.split("/")[0].strip().lower() for t in major_terms]
    out = {lab.OPENI_MESH[h] for h in heads if h in lab.OPENI_MESH}
    if heads and all(h == "normal" for h in heads):
        out.add("No Finding")
    return out


def index_openi(files, root, cfg: IndexConfig, *, progress=True):
    from tqdm.auto import tqdm

    from rv2.prompts.reports import extract_impression

    reports, dicom_meta = None, None
    for f in files:
        if f.is_dir() or f.suffix == ".tgz" or f.name.endswith((".tar.gz", ".tar")):
            reports = f
        elif "imageid" in set(read_header(f)):
            dicom_meta = read_table(f).drop_duplicates("imageid").set_index("imageid")
        else:
            raise ValueError(f"openi: {f} is neither NLMCXR_reports.tgz (or its XML folder) nor "
                             "nlmcxr_dicom_metadata.csv")
    if reports is None:
        raise ValueError("openi: pass NLMCXR_reports.tgz with --metadata")
    rows, no_image = [], 0
    for rid, xml in tqdm(_iter_openi_xml(reports), desc="read OpenI reports", unit="report",
                         disable=not progress):
        root_el = ET.parse(io.StringIO(xml)).getroot()
        images = [n.get("id") for n in root_el.iter("parentImage") if n.get("id")]
        if not images:
            no_image += 1
            continue
        majors = [n.text.strip() for n in root_el.iter("major") if n.text and n.text.strip()]
        uid = root_el.find("uId")
        study = uid.get("id") if uid is not None else f"CXR{rid}"
        found = openi_mesh_findings(majors)
        imp = extract_impression(xml, fallback=False)
        for img in images:
            rows.append({"image_id": img, "path": f"{img}.png", "study_id": study,
                         "impression": imp or None, "report": xml,
                         "source_labels": "; ".join(majors), "_found": found})
    df = pd.DataFrame(rows)
    labs = lab.labels_from_sets(list(df.pop("_found")), lab.OPENI_LABELS)
    for c in CHEXPERT_LABELS:
        df[c] = labs[c].to_numpy()
    if dicom_meta is not None:
        m = dicom_meta.reindex(df["image_id"].to_numpy())
        df["view"] = [lab.normalize_view(v) for v in m.get("View Position").to_numpy(dtype=object)]
        df["sex"] = [lab.normalize_sex(v) for v in m.get("Patient's Sex").to_numpy(dtype=object)]
        birth = pd.to_numeric(m.get("Patient's Birth Date"), errors="coerce").to_numpy(float)
        date = pd.to_numeric(m.get("Study Date"), errors="coerce").to_numpy(float)
        df["age"] = np.floor((date - birth) / 10000.0)
        pid = m.get("Patient ID")
        df["patient_id"] = [str(v) if _none(v) is not None else s
                            for v, s in zip(pid.to_numpy(dtype=object), df["study_id"])]
    else:
        df["view"], df["sex"], df["age"] = None, None, np.nan
        df["patient_id"] = df["study_id"]
    df["race"] = None
    df["split"] = cfg.default_split
    return df, Flow(df, "images in OpenI reports"), {
        "reports_without_images": no_image,
        "labels_rule": "MeSH major terms (first component) mapped by rv2.data.labels.OPENI_MESH; "
                       "No Finding = all major terms 'normal'"}
