"""`rv2 data index`: each dataset's published files -> one manifest (+ sidecar).

Python entry point (the CLI is a thin call into it):

    from rv2.data.config import IndexConfig
from rv2.data.index import index_dataset
    df, sidecar = index_dataset("mimic", metadata_files, root="/data/mimic-cxr-jpg",
                                config=IndexConfig(views="PA"))

`metadata_files` are recognised by their columns, not their names, so renamed
or gzipped (.csv.gz) copies work. Per dataset (what `--metadata` takes):

- mimic: `mimic-cxr-2.0.0-metadata.csv`, `mimic-cxr-2.0.0-chexpert.csv` (or
  `-negbio.csv`; `mimic_labeler` picks when both are given), MIMIC-IV
  `hosp/patients.csv` and `hosp/admissions.csv`; optional
  `mimic-cxr-2.0.0-split.csv` (used with `split_mode=official`). Images are
  `ROOT/files/p1X/pSUBJECT/sSTUDY/DICOM.jpg`; reports are read from
  `REPORTS_ROOT/files/p1X/pSUBJECT/sSTUDY.txt` (`reports_root` defaults to ROOT;
  the official reports zip unpacks to that same `files/` tree). E.g.
      rv2 data index --dataset mimic --root /data/mimic-cxr-jpg --views PA \\
        --metadata mimic-cxr-2.0.0-metadata.csv.gz --metadata mimic-cxr-2.0.0-chexpert.csv.gz \\
        --metadata patients.csv.gz --metadata admissions.csv.gz --out mimic.parquet
- chexpert: `train.csv` and/or `valid.csv` (paths relative to the folder
  that holds `CheXpert-v1.0*/`), optional demographics table (PATIENT,
  PRIMARY_RACE, ETHNICITY; CSV).
- chexpert-plus: `df_chexpert_plus_240401.csv` (optionally a CSV of the 14
  labels keyed by path_to_image).
- nih: `Data_Entry_2017_v2020.csv`, optional `test_list.txt` /
  `train_val_list.txt` for the official split; images `ROOT/images/NAME.png`.
- padchest: the 160K labels CSV; images `ROOT/IMAGEDIR/IMAGEID`.
- vindr: Kaggle `train.csv` or PhysioNet `image_labels_{train,test}.csv`;
  images `ROOT/{train,test}/IMAGE_ID.dicom`.
- openi: `NLMCXR_reports.tgz` (or a folder of its XML files), optional
  `nlmcxr_dicom_metadata.csv` for view/sex/age; images `ROOT/IMAGE_ID.png`.

Where a file is not at its expected path and `locate_by_name` is on, the root
tree is searched once by file name (e.g. NIH's images_001/images/ layout).
"""
from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from rv2.data import labels as lab
from rv2.data.adapters import get_adapter
from rv2.data.config import IndexConfig
from rv2.data.imageio import ImageReadError, load_image
from rv2.data.manifest import conform, summary_counts, validate
from rv2.data.schema import AGE_RANGE
from rv2.data.views import view_counts
from rv2.errors import MissingInputError, UserError

# ------------------------------------------------------------------ files

def locate_missing(df: pd.DataFrame, root: Path, progress: bool = True) -> tuple[pd.DataFrame, int]:
    """Rows whose path does not exist get the path of a same-named file under root (if unique)."""
    paths = df["path"].to_numpy(dtype=object)
    exists = np.array([p is not None and (root / p).is_file() for p in paths])
    if exists.all():
        return df, 0
    by_name: dict[str, str | None] = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), root)
            by_name[f] = None if f in by_name else rel  # None: ambiguous name
    found = 0
    new = paths.copy()
    for i in np.flatnonzero(~exists):
        if paths[i] is None:
            continue
        hit = by_name.get(os.path.basename(paths[i]))
        if hit:
            new[i] = hit
            found += 1
    out = df.copy()
    out["path"] = new
    return out, found


def count_missing(df: pd.DataFrame, root: Path, workers: int = 8) -> dict:
    """Stat every path under root (in parallel: cheap, but network file systems are
    slow per call); {"count", "examples"} of those that do not exist."""
    paths = df["path"].to_numpy(dtype=object)

    def exists(chunk):
        return [p is not None and os.path.isfile(os.path.join(root, p)) for p in chunk]

    chunks = [paths[i:i + 1024] for i in range(0, len(paths), 1024)]
    with ThreadPoolExecutor(max(4, workers)) as pool:
        ok = np.array([x for part in pool.map(exists, chunks) for x in part], dtype=bool)
    miss = np.flatnonzero(~ok)
    return {"count": int(len(miss)), "examples": [str(paths[i]) for i in miss[:5]]}


def check_file(full: Path, max_pixels: int) -> str | None:
    """None if the image decodes, else the reason."""
    try:
        load_image(full, max_pixels=max_pixels)
    except ImageReadError as exc:
        return exc.reason
    except Exception as exc:  # noqa: BLE001 - never die on one file
        return f"{type(exc).__name__}: {exc}"
    return None


def verify_files(df: pd.DataFrame, root: Path, *, max_pixels: int, workers: int = 2,
                 progress: bool = True) -> tuple[np.ndarray, list[dict]]:
    """Decode every image; (ok mask, [{image_id, path, reason}] for the bad ones)."""
    from tqdm.auto import tqdm

    paths = df["path"].to_numpy(dtype=object)

    def one(p):
        if p is None:
            return "no path"
        full = root / p
        if not full.is_file():
            return "file not found"
        return check_file(full, max_pixels)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        reasons = list(tqdm(pool.map(one, paths), total=len(paths), desc="verify images",
                            unit="img", disable=not progress))
    ok = np.array([r is None for r in reasons], dtype=bool)
    bad = [{"image_id": str(i), "path": str(p), "reason": r}
           for i, p, r in zip(df["image_id"], paths, reasons) if r is not None]
    return ok, bad


# ------------------------------------------------------------------ entry point

def index_dataset(dataset: str, metadata_files: Sequence[str | os.PathLike],
                  root: str | os.PathLike | None = None, *, config: IndexConfig | None = None,
                  progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Read one dataset's metadata into a manifest DataFrame and its sidecar dict.

    Steps: the adapter (source rows -> schema rows, its own exclusions), the
    view filter, the No Finding rule, then (with `verify_files`) decoding of
    every image; each step's removals are in sidecar["exclusions"].
    """
    cfg = dataclasses.replace(config or IndexConfig(), dataset=dataset).check()
    files = [Path(f) for f in metadata_files]
    if not files:
        raise UserError(f"{dataset}: no --metadata files given")
    for f in files:
        if not f.exists():
            raise MissingInputError(f"metadata file not found: {f}")
    root_p = Path(root) if root else None
    if root_p is not None and not root_p.is_dir():
        raise MissingInputError(f"--root {root_p} is not a folder")

    try:
        df, flow, extra = get_adapter(dataset)(files, root_p, cfg, progress=progress)
    except KeyError as exc:  # a column no adapter check caught: still one line, naming the files
        raise UserError(f"{dataset}: metadata file(s) {[str(f) for f in files]} lack column "
                        f"{exc.args[0]!r} that the {dataset} adapter reads; check they are the "
                        "dataset's published files (see `rv2 data index --help`)") from exc
    side: dict = {"dataset": dataset, "root": str(root_p) if root_p else None,
                  "metadata_files": [str(f) for f in files],
                  "label_values": "as the source says: 1 positive, 0 negative, -1 uncertain, "
                                  "NaN blank; the classifier's label_policy decides what they "
                                  "mean",
                  "views": cfg.views}
    side.update(extra)

    views = lab.parse_views(cfg.views)
    if views is not None and dataset != "mimic":  # mimic filters views inside its flow
        flow.df = df
        df = flow.keep(df["view"].isin(sorted(views)).to_numpy(), f"view not in {sorted(views)}")

    if cfg.no_finding_rule:
        labs = df[list(lab.CHEXPERT_LABELS)].copy()
        side["no_finding_rule"] = lab.apply_no_finding_rule(labs)
        for c in lab.CHEXPERT_LABELS:
            df[c] = labs[c].to_numpy()
    else:
        side["no_finding_rule"] = "off"

    # Ages outside the schema's range are data errors of the source (NIH holds a few
    # ages over 140): blanked here, counted in the sidecar, never carried downstream.
    age = pd.to_numeric(df["age"] if "age" in df else pd.Series(np.nan, index=df.index),
                        errors="coerce").to_numpy(dtype=float)
    lo, hi = AGE_RANGE
    wild = ~np.isnan(age) & ((age < lo) | (age > hi))
    side["ages_out_of_range"] = int(wild.sum())
    if wild.any():
        df = df.copy()
        df["age"] = np.where(wild, np.nan, age)

    side["bad_files"] = []
    side["missing_files"] = None
    if not cfg.verify_files and root_p is not None:
        side["missing_files"] = count_missing(df, root_p, workers=cfg.workers)
    if cfg.verify_files:
        if root_p is None:
            raise UserError("--verify-files needs --root (the folder the image paths are under)")
        if cfg.locate_by_name:
            df, found = locate_missing(df, root_p, progress)
            side["paths_located_by_name"] = found
        flow.df = df
        ok, bad = verify_files(df, root_p, max_pixels=cfg.max_pixels, workers=cfg.workers,
                               progress=progress)
        df = flow.keep(ok, "image missing, unreadable or corrupt")
        side["bad_files"] = bad
        reasons: dict[str, int] = {}
        for b in bad:
            key = b["reason"].split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
        side["bad_file_reasons"] = reasons
    side["exclusions"] = flow.steps
    df = conform(df, dataset=dataset)
    validate(df, f"{dataset} manifest")
    side["counts"] = summary_counts(df)
    # The filter stated, and what it left: consumers warn on mixed views unless asked.
    side["view_filter"] = ("all views kept (no filter; the paper uses PA only: --views PA)"
                           if views is None else f"kept views {sorted(views)}")
    side["views_present"] = view_counts(df)
    return df, side
