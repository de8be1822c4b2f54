"""Write the phantom world in the official dataset layouts.

MIMIC site (`<out>/mimic-cxr-jpg/` + `<out>/mimiciv/`), exactly as PhysioNet ships
MIMIC-CXR-JPG 2.0.0, the MIMIC-CXR reports and MIMIC-IV hosp (uncompressed CSVs):

    mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv   dicom_id, subject_id, study_id, ...
    mimic-cxr-jpg/mimic-cxr-2.0.0-chexpert.csv   subject_id, study_id, 14 labels (alphabetical)
    mimic-cxr-jpg/mimic-cxr-2.0.0-split.csv      dicom_id, study_id, subject_id, split
    mimic-cxr-jpg/files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg
    mimic-cxr-jpg/files/pXX/pSUBJECT/sSTUDY.txt  the free-text report
    mimiciv/hosp/patients.csv                    subject_id, gender, anchor_age, anchor_year, ...
    mimiciv/hosp/admissions.csv                  ..., race (per admission), ...

Subjects are spread over folders p10-p19; p19 is the paper's test split. As in
the real data, a few studies break the paper's inclusion rules (AP and lateral
views, a non-descriptive impression, a subject missing from patients.csv, race
outside the four groups), so that the adapter's exclusions have work to do.

NIH site (`<out>/nih/`): ChestX-ray14's `Data_Entry_2017_v2020.csv` (Image Index,
Finding Labels joined by "|", Follow-up #, Patient ID, Patient Age, Patient Gender,
View Position, original size and pixel spacing) with 8-bit PNGs in `images/`;
findings the report only calls possible are not listed (NIH has no uncertain label).

External site (`<out>/chexpert/`): CheXpert-v1.0-small's `train.csv` layout
(Path, Sex, Age, Frontal/Lateral, AP/PA, 14 labels in CheXpert order) with the
images under `CheXpert-v1.0-small/train/patientNNNNN/studyN/viewN_frontal.jpg`,
and the CheXpert demographics table as CSV (`chexpert_demographics.csv`:
PATIENT, GENDER, AGE_AT_CXR, PRIMARY_RACE, ETHNICITY).

`world_truth.csv` next to them lists every image with the parameters it was
drawn from (the answer key for tests).
"""
from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import numpy as np

from rv2.config import Config, write_artifact_meta
from rv2.data.schema import CHEXPERT_LABELS
from rv2.demo.radiology_reports import impression, labels, write_report
from rv2.demo.sites import GROUPS, get_site
from rv2.demo.world import Case, _seed, render, sample_case, sample_subject

MIMIC_METADATA = "mimic-cxr-2.0.0-metadata.csv"
MIMIC_CHEXPERT = "mimic-cxr-2.0.0-chexpert.csv"
MIMIC_SPLIT = "mimic-cxr-2.0.0-split.csv"
METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription",
                    "ViewPosition", "Rows", "Columns", "StudyDate", "StudyTime",
                    "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
                    "PatientOrientationCodeSequence_CodeMeaning")
PATIENTS_COLUMNS = ("subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod")
ADMISSIONS_COLUMNS = ("subject_id", "hadm_id", "admittime", "dischtime", "deathtime",
                      "admission_type", "admit_provider_id", "admission_location",
                      "discharge_location", "insurance", "language", "marital_status", "race",
                      "edregtime", "edouttime", "hospital_expire_flag")
CHEXPERT_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA") + CHEXPERT_LABELS
NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
              "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
NIH_NAMES = {"Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly",
             "Consolidation": "Consolidation", "Edema": "Edema", "Pleural Effusion": "Effusion",
             "Pneumothorax": "Pneumothorax"}
CHEXPERT_DEMO_COLUMNS = ("PATIENT", "GENDER", "AGE_AT_CXR", "PRIMARY_RACE", "ETHNICITY")
# CheXpert demographics (PRIMARY_RACE, ETHNICITY) per group; Hispanic is an ethnicity there.
CHEXPERT_RACE = {
    "Asian": (("Asian", "Non-Hispanic/Non-Latino"), ("Asian, non-Hispanic", "Non-Hispanic/Non-Latino")),
    "Black": (("Black or African American", "Non-Hispanic/Non-Latino"),
              ("Black, non-Hispanic", "Non-Hispanic/Non-Latino")),
    "Hispanic": (("Other", "Hispanic/Latino"), ("White, Hispanic", "Hispanic/Latino")),
    "White": (("White", "Non-Hispanic/Non-Latino"), ("White, non-Hispanic", "Non-Hispanic/Non-Latino")),
    None: (("Unknown", "Unknown"), ("Patient Refused", "Patient Refused")),
}

# MIMIC-IV race strings per group (per admission; several spellings per group).
RACE_STRINGS = {
    "Asian": ("ASIAN", "ASIAN - CHINESE", "ASIAN - ASIAN INDIAN", "ASIAN - SOUTH EAST ASIAN",
              "ASIAN - KOREAN"),
    "Black": ("BLACK/AFRICAN AMERICAN", "BLACK/CAPE VERDEAN", "BLACK/CARIBBEAN ISLAND",
              "BLACK/AFRICAN"),
    "Hispanic": ("HISPANIC/LATINO - PUERTO RICAN", "HISPANIC OR LATINO",
                 "HISPANIC/LATINO - DOMINICAN", "HISPANIC/LATINO - GUATEMALAN"),
    "White": ("WHITE", "WHITE - OTHER EUROPEAN", "WHITE - RUSSIAN", "WHITE - BRAZILIAN"),
    None: ("OTHER", "UNKNOWN", "UNABLE TO OBTAIN", "AMERICAN INDIAN/ALASKA NATIVE"),
}
VIEW_CODE = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral"}


@dataclasses.dataclass
class WorldConfig(Config):
    VERSION = 1
    seed: int = 0
    image_size: int = 64
    mimic_subjects: int = 400
    chexpert_subjects: int = 150
    nih_subjects: int = 0             # the NIH-layout site (0: not written)
    max_studies: int = 2              # studies per subject: 1..max_studies
    p19_fraction: float = 0.2         # MIMIC subjects in folder p19 (the paper's test split)
    p_missing_demographics: float = 0.01  # subjects absent from patients.csv
    jpeg_quality: int = 95


@dataclasses.dataclass
class WorldPaths:
    root: Path
    mimic_root: Path           # MIMIC-CXR-JPG root (holds files/ and the three CSVs)
    mimic_metadata: Path
    mimic_chexpert: Path
    mimic_split: Path
    patients: Path
    admissions: Path
    chexpert_root: Path        # the folder holding CheXpert-v1.0-small/
    chexpert_csv: Path
    chexpert_demographics: Path
    nih_root: Path
    nih_csv: Path
    truth: Path

    @classmethod
    def under(cls, root: str | Path) -> WorldPaths:
        r = Path(root)
        m = r / "mimic-cxr-jpg"
        h = r / "mimiciv" / "hosp"
        c = r / "chexpert"
        return cls(root=r, mimic_root=m, mimic_metadata=m / MIMIC_METADATA,
                   mimic_chexpert=m / MIMIC_CHEXPERT, mimic_split=m / MIMIC_SPLIT,
                   patients=h / "patients.csv", admissions=h / "admissions.csv", chexpert_root=c,
                   chexpert_csv=c / "CheXpert-v1.0-small" / "train.csv",
                   chexpert_demographics=c / "chexpert_demographics.csv", nih_root=r / "nih",
                   nih_csv=r / "nih" / "Data_Entry_2017_v2020.csv", truth=r / "world_truth.csv")


def _fmt(v: float) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"


def _dicom_id(rng) -> str:
    return "-".join(f"{int(rng.integers(0, 2**32)):08x}" for _ in range(5))


def _save_jpeg(arr: np.ndarray, path: Path, quality: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode="L").save(path, format="JPEG", quality=quality)


def _write_csv(path: Path, columns, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows(rows)


def _truth_row(case: Case, site: str, path: str, image_id: str, view: str, split_hint: str) -> dict:
    lab = labels(case)
    return {"site": site, "image_id": image_id, "path": path, "case_id": case.case_id,
            "view": view, "sex": case.sex, "age": case.age, "group": case.group or "",
            "findings": ";".join(f"{f.name}:{f.side}:{f.severity:.3f}:{int(f.uncertain)}"
                                 for f in case.findings),
            "ctr": round(case.ctr, 4), "nondescriptive": int(case.nondescriptive),
            "impression": impression(case), "folder_split": split_hint,
            **{k: _fmt(v) for k, v in lab.items()}}


def write_mimic(cfg: WorldConfig, paths: WorldPaths, progress=None) -> list[dict]:
    site = get_site("mimic")
    rng = np.random.default_rng(_seed(cfg.seed, "mimic-ids"))
    n = cfg.mimic_subjects
    # folder prefixes: p19 gets p19_fraction of subjects, p10-p18 share the rest
    n19 = int(round(cfg.p19_fraction * n))
    prefixes = [19] * n19 + [10 + (i % 9) for i in range(n - n19)]
    prefixes = list(rng.permutation(prefixes))
    subject_ids = set()
    study_ids = set()
    meta_rows, chex_rows, split_rows, pat_rows, adm_rows, truth = [], [], [], [], [], []
    hadm = 20000000
    for i in range(n):
        pre = int(prefixes[i])
        while True:
            sid = pre * 1_000_000 + int(rng.integers(0, 1_000_000))
            if sid not in subject_ids:
                subject_ids.add(sid)
                break
        demo = sample_subject(cfg.seed, site, i)
        anchor_year = int(rng.integers(2110, 2186))
        group_years = int(rng.choice([2008, 2011, 2014, 2017, 2020]))
        if rng.random() >= cfg.p_missing_demographics:
            pat_rows.append([sid, demo["sex"], demo["age"], anchor_year,
                             f"{group_years} - {group_years + 2}", ""])
        # admissions: 0-3, race spelled per admission; the same group throughout
        n_adm = int(rng.integers(1, 4)) if demo["group"] is not None else int(rng.integers(0, 2))
        for a in range(n_adm):
            hadm += int(rng.integers(1, 5000))
            day = f"{anchor_year + a}-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 28)):02d}"
            race = str(rng.choice(RACE_STRINGS[demo["group"]]))
            adm_rows.append([sid, hadm, f"{day} 08:15:00", f"{day} 17:40:00", "",
                             str(rng.choice(["EW EMER.", "URGENT", "ELECTIVE", "OBSERVATION ADMIT"])),
                             f"P{int(rng.integers(10000, 99999))}", "EMERGENCY ROOM", "HOME",
                             str(rng.choice(["Medicare", "Medicaid", "Other"])), "ENGLISH",
                             str(rng.choice(["MARRIED", "SINGLE", "WIDOWED", ""])), race,
                             "", "", 0])
        official = str(rng.choice(["train", "validate", "test"], p=[0.9, 0.03, 0.07]))
        for k in range(int(rng.integers(1, cfg.max_studies + 1))):
            case = sample_case(cfg.seed, site, i, k, demographics=demo)
            while True:
                st = 50_000_000 + int(rng.integers(0, 10_000_000))
                if st not in study_ids:
                    study_ids.add(st)
                    break
            year = anchor_year + k
            date = f"{year}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
            time = f"{int(rng.integers(0, 24)):02d}{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}.{int(rng.integers(0, 1000)):03d}"
            study_dir = paths.mimic_root / "files" / f"p{pre}" / f"p{sid}"
            study_dir.mkdir(parents=True, exist_ok=True)
            (study_dir / f"s{st}.txt").write_text(write_report(case))
            lab = labels(case)
            chex_rows.append([sid, st] + [_fmt(lab[c]) for c in sorted(CHEXPERT_LABELS)])
            views = [case.view] + (["LATERAL"] if rng.random() < site.p_lateral else [])
            for view in views:
                did = _dicom_id(rng)
                c = dataclasses.replace(case, view=view)
                img = render(c, cfg.image_size, site, seed=cfg.seed)
                rel = f"files/p{pre}/p{sid}/s{st}/{did}.jpg"
                _save_jpeg(img, paths.mimic_root / rel, cfg.jpeg_quality)
                proc = "CHEST (PORTABLE AP)" if view == "AP" else "CHEST (PA AND LAT)"
                meta_rows.append([did, sid, st, proc, view, cfg.image_size, cfg.image_size,
                                  date, time, proc, VIEW_CODE[view],
                                  "Recumbent" if view == "AP" else "Erect"])
                split_rows.append([did, st, sid, official])
                truth.append(_truth_row(c, "mimic", rel, did, view,
                                        "test" if pre == 19 else "trainval"))
                if progress:
                    progress.update(1)
    _write_csv(paths.mimic_metadata, METADATA_COLUMNS, meta_rows)
    _write_csv(paths.mimic_chexpert, ("subject_id", "study_id") + tuple(sorted(CHEXPERT_LABELS)),
               chex_rows)
    _write_csv(paths.mimic_split, ("dicom_id", "study_id", "subject_id", "split"), split_rows)
    _write_csv(paths.patients, PATIENTS_COLUMNS, pat_rows)
    _write_csv(paths.admissions, ADMISSIONS_COLUMNS, adm_rows)
    return truth


def write_chexpert(cfg: WorldConfig, paths: WorldPaths, progress=None) -> list[dict]:
    site = get_site("chexpert")
    rng = np.random.default_rng(_seed(cfg.seed, "chexpert-ids"))
    rows, truth, demo_rows = [], [], []
    base = paths.chexpert_root
    for i in range(cfg.chexpert_subjects):
        demo = sample_subject(cfg.seed, site, i)
        race, eth = CHEXPERT_RACE[demo["group"]][int(rng.integers(0, 2))]
        demo_rows.append([f"patient{i + 1:05d}", "Female" if demo["sex"] == "F" else "Male",
                          demo["age"], race, eth])
        for k in range(int(rng.integers(1, cfg.max_studies + 1))):
            case = sample_case(cfg.seed, site, i, k, demographics=demo)
            lab = labels(case)
            views = [case.view] + (["LATERAL"] if rng.random() < site.p_lateral else [])
            for v, view in enumerate(views, start=1):
                kind = "lateral" if view == "LATERAL" else "frontal"
                rel = f"CheXpert-v1.0-small/train/patient{i + 1:05d}/study{k + 1}/view{v}_{kind}.jpg"
                c = dataclasses.replace(case, view=view)
                _save_jpeg(render(c, cfg.image_size, site, seed=cfg.seed), base / rel, cfg.jpeg_quality)
                rows.append([rel, "Female" if case.sex == "F" else "Male", case.age,
                             "Lateral" if view == "LATERAL" else "Frontal",
                             "" if view == "LATERAL" else view]
                            + [_fmt(lab[c_]) for c_ in CHEXPERT_LABELS])
                truth.append(_truth_row(c, "chexpert", rel, rel, view, "external"))
                if progress:
                    progress.update(1)
    _write_csv(paths.chexpert_csv, CHEXPERT_COLUMNS, rows)
    _write_csv(paths.chexpert_demographics, CHEXPERT_DEMO_COLUMNS, demo_rows)
    return truth


def write_nih(cfg: WorldConfig, paths: WorldPaths, progress=None) -> list[dict]:
    from PIL import Image

    site = get_site("nih")
    rng = np.random.default_rng(_seed(cfg.seed, "nih-ids"))
    lines, truth = [NIH_HEADER], []
    (paths.nih_root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(cfg.nih_subjects):
        demo = sample_subject(cfg.seed, site, i)
        for k in range(int(rng.integers(1, cfg.max_studies + 1))):
            case = sample_case(cfg.seed, site, i, k, demographics=demo)
            name = f"{i + 1:08d}_{k:03d}.png"
            Image.fromarray(render(case, cfg.image_size, site, seed=cfg.seed), mode="L").save(
                paths.nih_root / "images" / name)
            found = sorted({NIH_NAMES[f.name] for f in case.findings
                            if f.name in NIH_NAMES and not f.uncertain}
                           | ({"Pneumonia"} if case.pneumonia else set()))
            lines.append(f"{name},{'|'.join(found) or 'No Finding'},{k},{i + 1},{case.age},"
                         f"{case.sex},{case.view},{cfg.image_size},{cfg.image_size},0.143,0.143")
            truth.append(_truth_row(case, "nih", f"images/{name}", name[:-4], case.view, "external"))
            if progress:
                progress.update(1)
    paths.nih_csv.write_text("\n".join(lines) + "\n")
    return truth


def write_world(cfg: WorldConfig, out: str | Path, show_progress: bool = True) -> WorldPaths:
    """Render and write the whole world under `out`; returns where everything is."""
    from tqdm import tqdm

    paths = WorldPaths.under(out)
    paths.root.mkdir(parents=True, exist_ok=True)
    expected = int((cfg.mimic_subjects + cfg.chexpert_subjects + cfg.nih_subjects)
                   * (1 + cfg.max_studies) / 2 * 1.2)
    with tqdm(total=expected, desc="world: rendering phantoms", unit="img",
              disable=not show_progress) as bar:
        truth = write_mimic(cfg, paths, bar) + write_chexpert(cfg, paths, bar)
        if cfg.nih_subjects:
            truth += write_nih(cfg, paths, bar)
        bar.total = bar.n
        bar.refresh()
    _write_csv(paths.truth, tuple(truth[0]), [list(r.values()) for r in truth])
    for artifact in (paths.mimic_root, paths.patients.parent.parent, paths.chexpert_root,
                     *([paths.nih_root] if cfg.nih_subjects else [])):
        write_artifact_meta(artifact, cfg, extra={"what": "rv2 demo phantom world",
                                                  "groups": list(GROUPS)})
    write_artifact_meta(paths.truth, cfg, extra={"images": len(truth)})
    return paths
