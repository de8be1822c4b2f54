"""`rv2 train-classifier sweep`: a grid of strategies x real-data sizes x synthetic sizes
x seeds, one table.

Synthetic size axis (`multiples`): each run that uses synthetic images draws
m x (the real images of its real-data size) of them, so that the paper's
supplementation curve (real data fixed, synthetic 0 to 5x) is one command:
`--strategies mixed --synthetic-multiples 0,1,2,5`. Multiple 0 is the real
subset alone (mixed only). `real` runs ignore the axis.

The synthetic pretraining of `pretrain-finetune` does not depend on the amount of
real data, so without the synthetic axis it runs once per seed (OUT/pretrain_s<seed>)
and every fine-tune of that seed starts from it; with the axis, once per seed and
synthetic count (OUT/pretrain_s<seed>_n<count>). Finished runs are skipped, so a
sweep resumes too.
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
from rv2.classify.train import real_subset, train_classifier
from rv2.config import write_artifact_meta
from rv2.errors import UserError
from rv2.files import atomic_write_text

log = logging.getLogger(__name__)


def run_name(strategy: str, n_real: int | None, fraction: float | None, seed: int,
             multiple: float | None = None) -> str:
    size = f"n{n_real}" if n_real is not None else (f"f{fraction:g}" if fraction is not None else "all")
    syn = f"_x{multiple:g}" if multiple is not None else ""
    return f"{strategy}_{size}{syn}_s{seed}"


def grid(strategies: Sequence[str], n_reals: Sequence[int | None], fractions: Sequence[float],
         seeds: Sequence[int], multiples: Sequence[float] = ()) -> list[dict]:
    """The runs of a sweep. Without `multiples`, strategies without real data run once
    per seed; with them, every strategy that uses synthetic images runs once per
    multiple (0 for mixed only) and real-data size."""
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad:
        raise UserError(f"unknown strategies {bad}; choose from {STRATEGIES}")
    if any(not m >= 0 for m in multiples):
        raise UserError(f"synthetic multiples must be >= 0, got {list(multiples)}")
    sizes: list[tuple[int | None, float | None]] = [(n, None) for n in n_reals] + [(None, f) for f in fractions]
    if not sizes:
        sizes = [(None, None)]
    runs = []
    for seed in seeds:
        for s in strategies:
            if s == "real" or not multiples:
                for n, f in (sizes if s != "synthetic" or multiples else [(None, None)]):
                    runs.append({"strategy": s, "n_real": n, "real_fraction": f, "seed": seed,
                                 "synthetic_multiple": None})
                continue
            for n, f in sizes:
                for m in multiples:
                    if m == 0 and s != "mixed":
                        continue  # no synthetic images: only mixed has a run left (the real subset)
                    runs.append({"strategy": s, "n_real": n, "real_fraction": f, "seed": seed,
                                 "synthetic_multiple": m})
    return runs


def synthetic_count(base: ClassifierConfig, run: dict) -> int | None:
    """Synthetic images a run draws: multiple x the real images of its real-data size."""
    m = run.get("synthetic_multiple")
    if m is None:
        return base.n_synthetic
    cfg = dataclasses.replace(base, n_real=run["n_real"], real_fraction=run["real_fraction"],
                              subset_seed=run["seed"])
    _, sub = real_subset(cfg)
    return int(round(m * len(sub)))


def run_sweep(base: ClassifierConfig, out: str | os.PathLike, *, strategies: Sequence[str],
              n_reals: Sequence[int | None] = (), fractions: Sequence[float] = (),
              seeds: Sequence[int] = (0,), multiples: Sequence[float] = ()) -> pd.DataFrame:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = grid(strategies, n_reals, fractions, seeds, multiples)
    if multiples:
        if base.n_synthetic is not None:
            raise UserError("give n_synthetic or synthetic multiples, not both")
        if not base.real:
            raise UserError("synthetic multiples count real images: give a real manifest (--real)")
    pretrained: dict[tuple, str] = {}
    rows = []
    for i, run in enumerate(runs, 1):
        seed = run["seed"]
        n_syn = synthetic_count(base, run)
        extra = {}
        if run["strategy"] == "pretrain-finetune" and not base.pretrained_from:
            key = (seed, n_syn if multiples else None)
            if key not in pretrained:
                name = f"pretrain_s{seed}" + (f"_n{n_syn}" if multiples else "")
                pre = dataclasses.replace(
                    base, strategy="synthetic", init=base.init if base.init != "auto" else "scratch",
                    epochs=base.pretrain_epochs or base.epochs, n_real=None, real_fraction=None,
                    n_synthetic=n_syn, seed=seed, subset_seed=seed, out=str(out / name))
                log.info("sweep: synthetic pretraining for seed %d (%s synthetic images)", seed,
                         "all" if n_syn is None else n_syn)
                pretrained[key] = str(train_classifier(pre))
            extra["pretrained_from"] = pretrained[key]
        name = run_name(run["strategy"], run["n_real"], run["real_fraction"], seed,
                        run["synthetic_multiple"])
        cfg = dataclasses.replace(base, strategy=run["strategy"], n_real=run["n_real"],
                                  real_fraction=run["real_fraction"], seed=seed, subset_seed=seed,
                                  n_synthetic=n_syn if run["strategy"] != "real" else base.n_synthetic,
                                  out=str(out / "runs" / name), **extra)
        log.info("sweep run %d/%d: %s", i, len(runs), name)
        d = train_classifier(cfg)
        rows.append(_row(run, d, n_syn))
        _write_table(out, rows, base, runs)
    return pd.DataFrame(rows)


def _row(run: dict, model_dir: Path, n_synthetic: int | None) -> dict:
    meta = json.loads((model_dir / "rv2_meta.json").read_text())
    s = meta["summary"]
    data = s.get("data", {})
    return {"strategy": run["strategy"], "seed": run["seed"], "n_real_requested": run["n_real"],
            "real_fraction": run["real_fraction"], "synthetic_multiple": run["synthetic_multiple"],
            "n_synthetic_requested": n_synthetic if run["strategy"] != "real" else 0,
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
