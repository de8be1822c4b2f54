"""QC calibration: how well the QC networks read sex, race and age on real radiographs.

The paper sets the QC's age tolerance to the age model's error on real data;
the authors' code uses 16 years. `calibrate_qc` runs the three QC networks on a
real manifest (images with their true sex, race and age) and measures

* sex and race accuracy (the QC rules of `rv2.generate.qc_rules`: P(female) >= 0.5,
  argmax over Asian/Black/White; other races are not judged),
* the age error (predicted - true): RMSE, SD, mean (bias) and MAE, and the share
  of real images the age check would pass at the calibrated tolerance and at 16,

each with n and a percentile bootstrap CI that resamples patients (all the
images of a drawn patient) where the manifest has `patient_id`, else images.

The calibration file (JSON, format `rv2-qc-calibration`, with rv2 metadata
beside it as `<file>.rv2.json`) names the QC models it measured (id, hash,
preprocessing convention) and `age_tolerance.years`: the SD of the age error by
default (`tolerance_rule=rmse` takes the RMSE). `rv2 generate --qc-calibration
FILE` uses that tolerance, and refuses a file made for other QC models.
"""
from __future__ import annotations

import dataclasses
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import pandas as pd

from rv2.config import Config, sha256_file, write_artifact_meta
from rv2.data.imageio import ImageReadError, center_crop, load_image, resize
from rv2.data.manifest import image_root, read_manifest
from rv2.errors import MissingInputError, UserError
from rv2.files import atomic_write_text, dumps
from rv2.generate.qc_rules import DEFAULT_AGE_TOLERANCE, race_prediction, sex_prediction
from rv2.models.qc_networks import RACE_CLASSES

FORMAT = "rv2-qc-calibration"
VERSION = 1
REQUIRED_COLUMNS = ("image_id", "path", "sex", "race", "age")
TOLERANCE_RULES = ("sd", "rmse")


class CalibrationError(UserError):
    """A calibration that cannot be made or used; the message says why and what to do."""


@dataclasses.dataclass
class QCCalibrationConfig(Config):
    """Settings of `rv2 qc calibrate` (saved in the calibration's metadata)."""

    VERSION = 1
    manifest: Optional[str] = None      # real images with sex, race and age columns
    root: Optional[str] = None          # image root (default: the manifest sidecar's, else its folder)
    split: Optional[str] = None         # only rows of this split (None: every row)
    limit: Optional[int] = None         # a seeded sample of this many rows (None: all)
    weights_dir: Optional[str] = None   # QC weights: the real files or an rv2 QC bundle
    convention: Optional[Literal["authors", "xrv"]] = None  # None: the bundle's, else authors
    # Real images are centre-cropped to a square and resized to this size before the
    # QC's own preprocessing, so that the QC sees them as it sees generations (512: SD 2.1).
    image_size: int = 512
    batch_size: int = 32
    workers: int = 4                    # image-decoding threads
    device: str = "auto"
    n_boot: int = 1000
    level: float = 0.95
    seed: int = 0
    tolerance_rule: Literal["sd", "rmse"] = "sd"   # paper: the age model's error SD
    on_bad_image: Literal["error", "skip"] = "error"
    progress: bool = True

    def check(self) -> "QCCalibrationConfig":
        if not self.manifest:
            raise CalibrationError("a manifest of real images is required (--manifest)")
        for name in ("image_size", "batch_size", "workers", "n_boot"):
            if getattr(self, name) < 1:
                raise CalibrationError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.5 <= self.level < 1:
            raise CalibrationError(f"level must be in [0.5, 1), got {self.level}")
        if self.limit is not None and self.limit < 2:
            raise CalibrationError(f"limit must be at least 2, got {self.limit}")
        return self


# ------------------------------------------------------------------ images

def load_square(path: Path, size: int) -> np.ndarray:
    """A radiograph as the QC sees a generation: float [0, 1], centre square, size x size."""
    img = load_image(path)
    img = center_crop(img, min(img.shape))
    return resize(img, size)


def _rows(cfg: QCCalibrationConfig) -> pd.DataFrame:
    path = Path(cfg.manifest)
    df = read_manifest(path, validate_values=False, required=("image_id", "path"))
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise CalibrationError(f"{path}: missing column(s) {missing}; QC calibration needs image "
                               "paths with the true sex, race and age (a manifest from "
                               "`rv2 data index`)")
    if cfg.split is not None:
        if "split" not in df.columns:
            raise CalibrationError(f"{path}: no split column, so split={cfg.split!r} selects nothing; "
                                   "drop --split")
        df = df[df["split"].astype("string").eq(cfg.split).fillna(False).to_numpy(bool)]
    if cfg.limit is not None and len(df) > cfg.limit:
        keep = np.sort(np.random.default_rng(cfg.seed).permutation(len(df))[: cfg.limit])
        df = df.iloc[keep]
    if len(df) < 2:
        raise CalibrationError(f"{path}: {len(df)} row(s) to calibrate on"
                               + (f" in split {cfg.split!r}" if cfg.split else "")
                               + "; at least 2 are needed")
    return df.reset_index(drop=True)


def predict_rows(df: pd.DataFrame, root: Path, qc, cfg: QCCalibrationConfig, name: str
                 ) -> tuple[dict[str, np.ndarray], np.ndarray, list[dict]]:
    """QC outputs for the readable rows: (outputs, mask of rows read, skipped rows)."""
    import torch
    from tqdm.auto import tqdm

    paths = df["path"].to_numpy(dtype=object)
    ids = df["image_id"].astype(str).to_numpy()

    def one(i: int):
        p = paths[i]
        if p is None or p is pd.NA or (isinstance(p, float) and p != p):
            return None, "no path"
        try:
            return load_square(root / str(p), cfg.image_size), None
        except ImageReadError as exc:
            return None, exc.reason

    outs: dict[str, list] = {"p_female": [], "race_probs": [], "age": []}
    ok = np.zeros(len(df), bool)
    skipped: list[dict] = []
    bar = tqdm(total=len(df), desc="qc calibrate", unit="img", disable=not cfg.progress)
    with ThreadPoolExecutor(cfg.workers) as pool:
        for start in range(0, len(df), cfg.batch_size):
            idx = range(start, min(start + cfg.batch_size, len(df)))
            imgs = []
            for i, (img, reason) in zip(idx, pool.map(one, idx)):
                if img is None:
                    if cfg.on_bad_image == "error":
                        raise CalibrationError(
                            f"{name}: cannot read image {paths[i]} (image_id {ids[i]}) under {root}: "
                            f"{reason}; fix or drop it (`rv2 data index --verify-files`), or set "
                            "on_bad_image=skip")
                    skipped.append({"image_id": ids[i], "path": str(paths[i]), "reason": reason})
                    continue
                ok[i] = True
                imgs.append(img)
            if imgs:
                pred = qc.predict(torch.from_numpy(np.stack(imgs))[:, None])
                for k in outs:
                    outs[k].append(pred[k])
            bar.update(len(idx))
    bar.close()
    if not ok.any():
        raise CalibrationError(f"{name}: none of the {len(df)} images could be read under {root} "
                               f"(e.g. {skipped[0]['path']}: {skipped[0]['reason']}); check --root")
    return {k: np.concatenate(v) for k, v in outs.items()}, ok, skipped


# ------------------------------------------------------------------ statistics

# Per-case columns summed per patient; every metric is a function of these sums.
_COLS = ("n_sex", "sex_ok", "n_race", "race_ok", "n_age", "err", "err2", "abs_err")


def _metrics(t: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics from summed columns (... x len(_COLS)); NaN where undefined."""
    c = {k: t[..., i] for i, k in enumerate(_COLS)}
    with np.errstate(invalid="ignore", divide="ignore"):
        n = c["n_age"]
        mean = c["err"] / n
        var = (c["err2"] - c["err"] * mean) / (n - 1)
        return {
            "sex_accuracy": c["sex_ok"] / c["n_sex"],
            "race_accuracy": c["race_ok"] / c["n_race"],
            "age_mean_error": mean,
            "age_rmse": np.sqrt(c["err2"] / n),
            "age_sd": np.where(n > 1, np.sqrt(np.maximum(var, 0.0)), np.nan),
            "age_mae": c["abs_err"] / n,
        }


def bootstrap_metrics(per_case: np.ndarray, groups: np.ndarray, n_boot: int, level: float,
                      seed: int) -> tuple[dict[str, float], dict[str, list]]:
    """Point estimates and percentile CIs; resamples whole groups (patients) with replacement."""
    codes, uniq = pd.factorize(groups, sort=True)
    n_groups = len(uniq)
    sums = np.zeros((n_groups, per_case.shape[1]))
    np.add.at(sums, codes, per_case)
    point = {k: float(v) for k, v in _metrics(sums.sum(axis=0)).items()}
    rng = np.random.default_rng(seed)
    draws: dict[str, list] = {k: [] for k in point}
    chunk = max(1, min(n_boot, 4_000_000 // max(n_groups, 1)))
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=b)
        for k, v in _metrics(counts @ sums).items():
            draws[k].append(v)
        done += b
    alpha = (1 - level) / 2
    cis = {}
    for k, parts in draws.items():
        v = np.concatenate(parts)
        v = v[np.isfinite(v)]
        cis[k] = ([float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))]
                  if len(v) and math.isfinite(point[k]) else None)
    return point, cis


def _num(x: float) -> float | None:
    return x if math.isfinite(x) else None


def summarize(df: pd.DataFrame, pred: dict[str, np.ndarray], cfg: QCCalibrationConfig) -> dict:
    """The calibration's statistics for rows `df` (readable) with QC outputs `pred`."""
    sex = df["sex"].astype("string").to_numpy(dtype=object, na_value=None)
    race = df["race"].astype("string").to_numpy(dtype=object, na_value=None)
    age = pd.to_numeric(df["age"], errors="coerce").to_numpy(dtype=float)
    sex_pred = np.array([sex_prediction(float(p)) for p in pred["p_female"]], dtype=object)
    race_pred = np.array([race_prediction(p) for p in pred["race_probs"]], dtype=object)
    has_sex = np.isin(sex, ["F", "M"])
    has_race = np.isin(race, list(RACE_CLASSES))
    has_age = np.isfinite(age)
    if has_age.sum() < 2:
        raise CalibrationError(f"{cfg.manifest}: {int(has_age.sum())} readable image(s) with an age; "
                               "the age error needs at least 2")
    err = np.where(has_age, pred["age"].astype(float) - np.nan_to_num(age), 0.0)
    per_case = np.stack([has_sex, has_sex & (sex_pred == sex), has_race, has_race & (race_pred == race),
                         has_age, err, err ** 2, np.abs(err)], axis=1).astype(float)
    if "patient_id" in df.columns and df["patient_id"].notna().all():
        unit, groups = "patient", df["patient_id"].astype(str).to_numpy()
    else:
        unit, groups = "image", df["image_id"].astype(str).to_numpy()
    point, ci = bootstrap_metrics(per_case, groups, cfg.n_boot, cfg.level, cfg.seed)
    tol = point["age_sd"] if cfg.tolerance_rule == "sd" else point["age_rmse"]
    abs_err = np.abs(err[has_age])
    not_judged_race: dict[str, int] = {}
    for r in race[~has_race]:
        key = "missing" if r is None else str(r)
        not_judged_race[key] = not_judged_race.get(key, 0) + 1
    return {
        "bootstrap": {"unit": unit, "groups": int(len(set(groups))), "n_boot": cfg.n_boot,
                      "level": cfg.level, "seed": cfg.seed, "method": "percentile"},
        "sex": {"n": int(has_sex.sum()), "accuracy": _num(point["sex_accuracy"]),
                "ci": ci["sex_accuracy"], "not_judged": int((~has_sex).sum()),
                "rule": "P(female) >= 0.5 reads female"},
        "race": {"n": int(has_race.sum()), "accuracy": _num(point["race_accuracy"]),
                 "ci": ci["race_accuracy"],
                 "per_class": {c: {"n": int((race == c).sum()),
                                   "accuracy": _num(float((race_pred[race == c] == c).mean()))
                                   if (race == c).any() else None} for c in RACE_CLASSES},
                 "not_judged": not_judged_race,
                 "rule": f"argmax over {list(RACE_CLASSES)}; other races are not judged"},
        "age": {"n": int(has_age.sum()), "error": "predicted - true (years)",
                "rmse": point["age_rmse"], "rmse_ci": ci["age_rmse"],
                "sd": point["age_sd"], "sd_ci": ci["age_sd"],
                "mean_error": point["age_mean_error"], "mean_error_ci": ci["age_mean_error"],
                "mae": point["age_mae"], "mae_ci": ci["age_mae"],
                "within_tolerance": {"calibrated": float((abs_err <= tol).mean()),
                                     "default_16": float((abs_err <= DEFAULT_AGE_TOLERANCE).mean())}},
        "age_tolerance": {"years": tol, "rule": cfg.tolerance_rule,
                          "meaning": f"the {cfg.tolerance_rule.upper()} of the age model's error on "
                                     f"{int(has_age.sum())} real images (the paper's rule; the "
                                     f"authors' code uses {DEFAULT_AGE_TOLERANCE:g})"},
    }


# ------------------------------------------------------------------ entry points

def calibrate_qc(cfg: QCCalibrationConfig, qc_models: Any = None) -> dict:
    """Measure the QC networks on cfg.manifest; returns the calibration document.

    qc_models: loaded `QCModels` (default: loaded from cfg.weights_dir on cfg.device)."""
    cfg.check()
    df = _rows(cfg)
    root = image_root(cfg.manifest, cfg.root)
    if not root.is_dir():
        raise MissingInputError(f"image root {root} is not a folder; pass --root")
    if qc_models is None:
        from rv2.models.device import resolve_device
        from rv2.models.qc_networks import load_qc_models

        qc_models = load_qc_models(cfg.weights_dir, resolve_device(cfg.device), cfg.convention,
                                   cfg.batch_size)
    elif cfg.convention is not None:
        qc_models.set_convention(cfg.convention)
    pred, ok, skipped = predict_rows(df, root, qc_models, cfg, str(cfg.manifest))
    doc = {"format": FORMAT, "version": VERSION,
           "qc_model": {"model_id": qc_models.model_id, "model_hash": qc_models.model_hash,
                        "convention": qc_models.convention},
           "data": {"manifest": str(cfg.manifest), "root": str(root), "split": cfg.split,
                    "rows": int(len(df)), "images_used": int(ok.sum()), "images_skipped": len(skipped),
                    "skipped": skipped[:50], "image_size": cfg.image_size}}
    doc.update(summarize(df[ok].reset_index(drop=True), pred, cfg))
    return doc


def write_calibration(doc: dict, path: str | os.PathLike, cfg: QCCalibrationConfig | None = None
                      ) -> Path:
    """The calibration JSON at `path`, its rv2 metadata beside it (`<path>.rv2.json`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, dumps(doc, indent=2))
    inputs = [cfg.manifest] if cfg is not None and cfg.manifest else []
    write_artifact_meta(path, cfg, inputs=inputs, extra={"qc_model": doc.get("qc_model"),
                                                          "age_tolerance": doc.get("age_tolerance")})
    return path


def read_calibration(path: str | os.PathLike) -> dict:
    """A calibration file, checked: format, version, a usable age tolerance, the QC model."""
    import json

    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"QC calibration file not found: {path} (make one with "
                                "`rv2 qc calibrate`)")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"{path}: not a JSON QC calibration ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CalibrationError(f"{path}: not a QC calibration (format "
                               f"{doc.get('format') if isinstance(doc, dict) else None!r}, "
                               f"expected {FORMAT!r}); make one with `rv2 qc calibrate`")
    if int(doc.get("version", 0)) > VERSION:
        raise CalibrationError(f"{path}: calibration version {doc.get('version')} is newer than "
                               "this rv2 reads; upgrade rv2")
    tol = (doc.get("age_tolerance") or {}).get("years")
    if not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol <= 0:
        raise CalibrationError(f"{path}: age_tolerance.years must be a positive number, got {tol!r}")
    if not isinstance(doc.get("qc_model"), dict) or "model_hash" not in doc["qc_model"]:
        raise CalibrationError(f"{path}: no qc_model.model_hash: which QC models were measured?")
    return doc


def resolve_age_tolerance(qc_cfg, model_id: str | None = None, model_hash: str | None = None,
                          convention: str | None = None) -> dict:
    """The age tolerance of a generation run and where it came from.

    qc_cfg: `GenerateConfig.qc`; model_id / model_hash / convention: the run's QC models
    (hash None: QC off). A calibration file wins (its QC models must be the run's);
    else qc.age_tolerance."""
    if qc_cfg.calibration:
        path = Path(qc_cfg.calibration)
        doc = read_calibration(path)
        if qc_cfg.age_tolerance != DEFAULT_AGE_TOLERANCE:
            raise CalibrationError(f"both a QC calibration ({path}) and qc.age_tolerance="
                                   f"{qc_cfg.age_tolerance:g} are set; give one")
        made = doc["qc_model"]
        if model_hash is not None and (made.get("model_hash") != model_hash
                                       or made.get("convention") != convention):
            raise CalibrationError(
                f"{path} was measured on QC models {made.get('model_id')}@{made.get('model_hash')} "
                f"({made.get('convention')} preprocessing); this run uses {model_id}@"
                f"{model_hash} ({convention}). Calibrate these with `rv2 qc calibrate`")
        tol = doc["age_tolerance"]
        age = doc.get("age") or {}
        return {"years": float(tol["years"]), "source": "calibration",
                "rule": f"paper: the {str(tol.get('rule', 'sd')).upper()} of the age model's error "
                        f"on {age.get('n')} real images",
                "calibration": str(path), "calibration_sha256": sha256_file(path),
                "age_sd": age.get("sd"), "age_rmse": age.get("rmse"),
                "manifest": (doc.get("data") or {}).get("manifest")}
    if qc_cfg.age_tolerance == DEFAULT_AGE_TOLERANCE:
        return {"years": DEFAULT_AGE_TOLERANCE, "source": "default",
                "rule": f"the authors' default ({DEFAULT_AGE_TOLERANCE:g} years); no QC calibration "
                        "given (`rv2 qc calibrate`, then --qc-calibration)"}
    return {"years": float(qc_cfg.age_tolerance), "source": "setting",
            "rule": "qc.age_tolerance as set"}


def format_calibration(doc: dict) -> str:
    """A few lines for the terminal."""
    def ci(v):
        return f"[{v[0]:.3f}, {v[1]:.3f}]" if v else "[n/a]"

    s, r, a, b = doc["sex"], doc["race"], doc["age"], doc["bootstrap"]
    acc = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    lines = [
        f"QC models {doc['qc_model']['model_id']}@{doc['qc_model']['model_hash']} "
        f"({doc['qc_model']['convention']}) on {doc['data']['images_used']} real images "
        f"({doc['data']['images_skipped']} skipped); {int(b['level'] * 100)}% CIs by {b['unit']} "
        f"bootstrap ({b['n_boot']} resamples)",
        f"  sex accuracy   {acc(s['accuracy'])} {ci(s['ci'])}  n={s['n']}",
        f"  race accuracy  {acc(r['accuracy'])} {ci(r['ci'])}  n={r['n']}",
        f"  age RMSE       {a['rmse']:.3f} {ci(a['rmse_ci'])}  n={a['n']}",
        f"  age error SD   {a['sd']:.3f} {ci(a['sd_ci'])}  (mean error {a['mean_error']:+.3f})",
        f"  age tolerance  {doc['age_tolerance']['years']:.3f} years ({doc['age_tolerance']['rule']}); "
        f"real images within it {a['within_tolerance']['calibrated']:.3f}, within 16 "
        f"{a['within_tolerance']['default_16']:.3f}",
    ]
    return "\n".join(lines)
