"""`predict(model_dir, manifest, root)`: probabilities per image and label.

Unreadable images (missing, truncated, not an image) are never silently
dropped: they are left out of the predictions and listed, with the reason, in
`df.attrs["skipped"]` (and in the `skipped` report the CLI writes).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from rv2.classify import model_dir as md
from rv2.classify.data import manifest_root
from rv2.classify.predictor import Predictor
from rv2.config import write_artifact_meta
from rv2.data.dali import dali_device, loader_workers
from rv2.data.manifest import read_manifest
from rv2.data.torch_dataset import ManifestDataset
from rv2.errors import UserError
from rv2.files import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

SKIPPED_COLUMNS = ["image_id", "path", "reason"]


def predict(model_dir: str | os.PathLike, manifest: str | os.PathLike | pd.DataFrame,
            root: str | os.PathLike | None = None, *, batch_size: int = 64, device: str = "auto",
            num_workers: int | None = None, amp: bool = True, progress: bool = True,
            decoder: str = "pil", predictor: Predictor | None = None) -> pd.DataFrame:
    """A DataFrame with `image_id` and one probability column per label (model order).

    root: folder the manifest's paths are relative to (default: the root in the manifest's
    sidecar, else its folder; required when a DataFrame is passed). predictor: a loaded
    `Predictor` (e.g. over a compiled engine); default: the folder's eager model on `device`.
    Skipped images: `result.attrs["skipped"]`.
    """
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    predictor = predictor or Predictor.load(model_dir, device, amp=amp)
    dev = torch.device(getattr(predictor.backend, "device", "cpu"))
    labels = predictor.labels
    if isinstance(manifest, pd.DataFrame):
        if root is None:
            raise UserError("root is required when the manifest is a DataFrame")
        df, name = manifest, "manifest"
    else:
        df, name = read_manifest(manifest), str(manifest)
        root = manifest_root(manifest, root)
    num_workers = loader_workers(num_workers, dev, decoder)
    pre = predictor.preprocessing
    ds = ManifestDataset(df, root, image_size=pre.image_size, labels=labels, mean=pre.mean,
                         std=pre.std, require_labels=False, name=name, decoder=decoder,
                         dali_device_id=dali_device(decoder, dev, num_workers))
    ids = df["image_id"].astype("string")
    if ids.duplicated().any():
        dup = ids[ids.duplicated()].unique()[:5].tolist()
        raise UserError(f"{name}: image_id is not unique (e.g. {dup}); predictions are keyed by it")
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=dev.type == "cuda")
    rows, probs, skipped = [], [], []
    for batch in tqdm(loader, desc="predict", unit="batch", disable=not progress):
        ok = batch["ok"].numpy().astype(bool)
        for i in np.nonzero(~ok)[0]:
            idx = int(batch["index"][i])
            skipped.append({"image_id": ds.image_ids[idx], "path": ds.paths[idx],
                            "reason": batch["error"][i]})
        if not ok.any():
            continue
        keep = torch.from_numpy(ok)
        probs.append(predictor.predict_tensor(batch["image"][keep].numpy()))
        rows.extend(int(i) for i in batch["index"][keep])
    p = np.concatenate(probs) if probs else np.zeros((0, len(labels)), np.float32)
    out = pd.DataFrame(p.astype(np.float32), columns=labels)
    out.insert(0, "image_id", pd.array([ds.image_ids[i] for i in rows], dtype="string"))
    out.attrs["skipped"] = pd.DataFrame(skipped, columns=SKIPPED_COLUMNS)
    out.attrs["n_input"] = len(ds)
    if skipped:
        log.warning("%d of %d images could not be read and were skipped", len(skipped), len(ds))
    return out


def write_predictions(preds: pd.DataFrame, out: str | os.PathLike, *, model_dir, manifest,
                      config: dict | None = None) -> tuple[Path, Path]:
    """Parquet of predictions + its rv2 metadata + `<stem>.skipped.csv` (always written)."""

    out = Path(out)
    table = preds.copy()
    table.attrs = {}
    with atomic_path(out) as tmp:
        table.to_parquet(tmp, index=False)
    skipped = preds.attrs.get("skipped", pd.DataFrame(columns=SKIPPED_COLUMNS))
    skipped_path = out.with_name(out.stem + ".skipped.csv")
    atomic_write_text(skipped_path, skipped.to_csv(index=False))
    inputs = [p for p in (Path(model_dir) / md.WEIGHTS, manifest) if not isinstance(p, pd.DataFrame)]
    write_artifact_meta(out, config, inputs=inputs,
                        extra={"model_dir": str(model_dir), "n_input": preds.attrs.get("n_input"),
                               "n_predicted": len(preds), "n_skipped": len(skipped),
                               "skipped_report": str(skipped_path),
                               "labels": [c for c in preds.columns if c != "image_id"]})
    return out, skipped_path


def check_unreadable(preds: pd.DataFrame, skipped_path: str | os.PathLike,
                     max_share: float = 0.05) -> None:
    """UserError when no image could be predicted, or the unreadable share is above
    `max_share` (a wrong --root, a half-copied dataset): a pipeline must not carry on
    with predictions for a part of the images it asked for."""
    n_in = int(preds.attrs.get("n_input", len(preds)))
    skipped = preds.attrs.get("skipped")
    n_skip = 0 if skipped is None else len(skipped)
    reason = ""
    if n_skip:
        reasons = skipped["reason"].astype(str).str.split(":").str[0].value_counts()
        reason = f"; most common reason: {reasons.index[0]} ({int(reasons.iloc[0])})"
    if not n_in:
        raise UserError("nothing to predict: the manifest has no rows")
    if not len(preds):
        raise UserError(f"no image could be read ({n_skip} of {n_in} skipped, listed in "
                        f"{skipped_path}{reason}); check --root and the manifest's paths")
    if n_in and n_skip / n_in > max_share:
        raise UserError(f"{n_skip} of {n_in} images ({n_skip / n_in:.1%}) could not be read, "
                        f"above the allowed {max_share:.1%} (--max-unreadable); listed in "
                        f"{skipped_path}{reason}")
