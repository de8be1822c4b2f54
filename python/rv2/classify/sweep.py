"""`rv2 train-classifier sweep`: a grid of strategies x real-data sizes x seeds, one table.

The synthetic pretraining of `pretrain-finetune` does not depend on the amount of
real data, so it runs once per seed (OUT/pretrain_s<seed>) and every fine-tune of
that seed starts from it. Finished runs are skipped, so a sweep resumes too.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from rv2.classify.config import STRATEGIES, ClassifierConfig
from rv2.classify.train import train_classifier
from rv2.config import write_artifact_meta
from rv2.errors import UserError
from rv2.files import atomic_write_text

log = logging.getLogger(__name__)


def run_name(strategy: str, n_real: int | None, fraction: float | None, seed: int) -> str:
    size = f"n{n_real}" if n_real is not None else (f"f{fraction:g}" if fraction is not None else "all")
    return f"{strategy}_{size}_s{seed}"


def grid(strategies: Sequence[str], n_reals: Sequence[int | None], fractions: Sequence[float],
         seeds: Sequence[int]) -> list[dict]:
    """The runs of a sweep; strategies without real data run once per seed."""
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad:
        raise UserError(f"unknown strategies {bad}; choose from {STRATEGIES}")
    sizes: list[tuple[int | None, float | None]] = [(n, None) for n in n_reals] + [(None, f) for f in fractions]
    if not sizes:
        sizes = [(None, None)]
    runs = []
    for seed in seeds:
        for s in strategies:
            for n, f in (sizes if s != "synthetic" else [(None, None)]):
                runs.append({"strategy": s, "n_real": n, "real_fraction": f, "seed": seed})
    return runs


def run_sweep(base: ClassifierConfig, out: str | os.PathLike, *, strategies: Sequence[str],
              n_reals: Sequence[int | None] = (), fractions: Sequence[float] = (),
              seeds: Sequence[int] = (0,)) -> pd.DataFrame:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = grid(strategies, n_reals, fractions, seeds)
    pretrained: dict[int, str] = {}
    rows = []
    for i, run in enumerate(runs, 1):
        seed = run["seed"]
        extra = {}
        if run["strategy"] == "pretrain-finetune" and not base.pretrained_from:
            if seed not in pretrained:
                pre = dataclasses.replace(
                    base, strategy="synthetic", init=base.init if base.init != "auto" else "scratch",
                    epochs=base.pretrain_epochs or base.epochs, n_real=None, real_fraction=None,
                    seed=seed, subset_seed=seed, out=str(out / f"pretrain_s{seed}"))
                log.info("sweep: synthetic pretraining for seed %d", seed)
                pretrained[seed] = str(train_classifier(pre))
            extra["pretrained_from"] = pretrained[seed]
        name = run_name(run["strategy"], run["n_real"], run["real_fraction"], seed)
        cfg = dataclasses.replace(base, strategy=run["strategy"], n_real=run["n_real"],
                                  real_fraction=run["real_fraction"], seed=seed, subset_seed=seed,
                                  out=str(out / "runs" / name), **extra)
        log.info("sweep run %d/%d: %s", i, len(runs), name)
        d = train_classifier(cfg)
        rows.append(_row(run, d))
        _write_table(out, rows, base, runs)
    return pd.DataFrame(rows)


def _row(run: dict, model_dir: Path) -> dict:
    meta = json.loads((model_dir / "rv2_meta.json").read_text())
    s = meta["summary"]
    data = s.get("data", {})
    return {"strategy": run["strategy"], "seed": run["seed"], "n_real_requested": run["n_real"],
            "real_fraction": run["real_fraction"],
            "n_real_images": (data.get("real_used") or {}).get("images", 0) if run["strategy"] != "synthetic" else 0,
            "n_real_patients": (data.get("real_used") or {}).get("patients") if run["strategy"] != "synthetic" else 0,
            "n_synthetic_images": (data.get("synthetic_used") or {}).get("images", 0)
            if run["strategy"] != "real" else 0,
            "best_epoch": s["best_epoch"], "epochs_run": s["epochs_run"], "stop_reason": s["stop_reason"],
            "val_loss": s["val_loss"], "val_auroc_mean": s["val_auroc_mean"],
            "n_auroc_labels": s["n_auroc_labels"], "train_seconds": s["train_seconds"],
            "model_dir": str(model_dir), **{f"auroc/{k}": v for k, v in s["val_auroc"].items()}}


def _write_table(out: Path, rows: list[dict], base: ClassifierConfig, runs: list[dict]) -> None:
    df = pd.DataFrame(rows)
    atomic_write_text(out / "sweep.csv", df.to_csv(index=False))
    write_artifact_meta(out / "sweep.csv", base, inputs=[p for p in (base.real, base.synthetic, base.val) if p],
                        extra={"grid": runs, "runs_done": len(rows)})
