"""OpenI / Indiana (NLMCXR_reports.tgz, optional DICOM metadata CSV) -> manifest rows."""
from __future__ import annotations

import io
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd

from rv2.data import labels as lab
from rv2.data.adapters.base import ExclusionTracker, na_to_none, read_header, read_table
from rv2.data.config import IndexConfig
from rv2.data.report_sections import extract_impression
from rv2.data.schema import CHEXPERT_LABELS
from rv2.errors import UserError


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

    reports, dicom_meta = None, None
    for f in files:
        if f.is_dir() or f.suffix == ".tgz" or f.name.endswith((".tar.gz", ".tar")):
            reports = f
        elif "imageid" in set(read_header(f)):
            dicom_meta = read_table(f).drop_duplicates("imageid").set_index("imageid")
        else:
            raise UserError(f"openi: {f} is neither NLMCXR_reports.tgz (or its XML folder) nor "
                             "nlmcxr_dicom_metadata.csv")
    if reports is None:
        raise UserError("openi: pass NLMCXR_reports.tgz with --metadata")
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
        df["patient_id"] = [str(v) if na_to_none(v) is not None else s
                            for v, s in zip(pid.to_numpy(dtype=object), df["study_id"])]
    else:
        df["view"], df["sex"], df["age"] = None, None, np.nan
        df["patient_id"] = df["study_id"]
    df["race"] = None
    df["split"] = cfg.default_split
    return df, ExclusionTracker(df, "images in OpenI reports"), {
        "reports_without_images": no_image,
        "labels_rule": "MeSH major terms (first component) mapped by rv2.data.labels.OPENI_MESH; "
                       "No Finding = all major terms 'normal'"}
