#!/usr/bin/env python
"""Per-cell balance of a plain `rv2 generate` run against quota runs at the same
attempt budget, on the phantom world with the bundled demo generator and QC.

Steps (each an `rv2` command, printed, run in-process as `rv2 demo` runs them):
  1. world + `rv2 data index` (MIMIC layout) + `rv2 prompts build/expand`;
  2. plain: `rv2 generate --limit N` (the paper's rule: up to --max-attempts per prompt);
  3. quota: `rv2 generate --quota per-cell=T --budget-attempts B`, with B the plain
     run's attempts and T its accepted images / cells (the same images on average),
     drawing from the whole table; the same with `--limit N` (only the plain run's
     prompts: re-aging and further seeds, no further impressions); and per-cell=2T
     (a target the budget cannot reach: which cells miss, at which pass rates).
Then prints a table: images per cell (min, median, max, coefficient of variation),
cells at target, images short of target, and images per race and age bin.

    python tools/quota_study.py --out runs/quota-study            # ~10 min on 2 cores
    python tools/quota_study.py --out runs/quota-study --n 240 --steps 15

Phantom-world figures: they say how the rules behave, not what real weights give.
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))


def rv2(args: list) -> float:
    from rv2.cli import main

    args = [str(a) for a in args]
    print("$ rv2 " + " ".join(shlex.quote(a) for a in args), flush=True)
    t0 = time.perf_counter()
    try:
        main.main(args=args, prog_name="rv2", standalone_mode=False)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    return time.perf_counter() - t0


def cell_counts(store: Path, cells: list[tuple]) -> dict:
    import pandas as pd

    man = pd.read_parquet(store / "manifest.parquet")
    got = man.groupby(["sex", "race", "age_bin"]).size().to_dict()
    return {c: int(got.get(c, 0)) for c in cells}


def balance(counts: dict, target: int) -> dict:
    v = list(counts.values())
    mean = statistics.fmean(v)
    return {"images": sum(v), "min": min(v), "median": statistics.median(v), "max": max(v),
            "cv": round(statistics.pstdev(v) / mean, 3) if mean else None,
            "cells_at_target": sum(1 for x in v if x >= target),
            "short": sum(max(0, target - x) for x in v)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/quota-study"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--subjects", type=int, default=1400, help="MIMIC-layout subjects of the world")
    ap.add_argument("--n", type=int, default=480, help="prompts of the plain run (--limit)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-attempts", type=int, default=4)
    args = ap.parse_args()

    import pandas as pd
    from rv2.data.schema import AGE_BINS
    from rv2.demo.pipeline import bundled_weights
    from rv2.demo.writers import WorldConfig, write_world

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    w = bundled_weights()
    wall = {}
    expanded = out / "prompts" / "expanded.parquet"
    if not expanded.is_file():
        wp = write_world(WorldConfig(seed=args.seed, mimic_subjects=args.subjects,
                                     chexpert_subjects=0), out / "world", show_progress=False)
        rv2(["data", "index", "--dataset", "mimic", "--root", wp.mimic_root, "--views", "PA",
             "--metadata", wp.mimic_metadata, "--metadata", wp.mimic_chexpert, "--metadata",
             wp.mimic_split, "--metadata", wp.patients, "--metadata", wp.admissions,
             "--set", f"seed={args.seed}", "--out", out / "data" / "mimic.parquet", "--quiet"])
        rv2(["prompts", "build", "--manifest", out / "data" / "mimic.parquet",
             "--out", out / "prompts" / "prompts.parquet"])
        rv2(["prompts", "expand", out / "prompts" / "prompts.parquet", "--seed", args.seed,
             "--out", expanded])
    table = pd.read_parquet(expanded)
    cells = [(s, r, b) for s in sorted(table["sex"].unique()) for r in sorted(table["race"].unique())
             for b in AGE_BINS if (table["age_bin"] == b).any()]
    common = ["generate", "--prompts", expanded, "--model", w["generator"], "--qc-weights-dir",
              w["qc"], "--steps", args.steps, "--guidance", args.guidance, "--batch-size",
              args.batch_size, "--max-attempts", args.max_attempts, "--device", "cpu",
              "--executor", "inprocess", "--no-progress", "--set", f"sampler.base_seed={args.seed}"]
    wall["plain"] = rv2(common + ["--out", out / "plain", "--limit", args.n])
    plain = json.loads((out / "plain" / "summary.json").read_text())
    budget = plain["attempts_total"]
    target = max(1, round(plain["accepted"] / len(cells)))
    runs = {"plain": (out / "plain", plain)}
    arms = (("quota", target, []), ("quota-limit", target, ["--limit", args.n]),
            ("quota-2x", 2 * target, []))
    for name, t, extra in arms:
        wall[name] = rv2(common + ["--out", out / name, "--quota", f"per-cell={t}",
                                   "--budget-attempts", budget] + extra)
        runs[name] = (out / name, json.loads((out / name / "summary.json").read_text()))

    rows, counts = {}, {}
    for name, (store, summ) in runs.items():
        counts[name] = cell_counts(store, cells)
        t = 2 * target if name == "quota-2x" else target
        rows[name] = {"target": t, **balance(counts[name], t), "attempts": summ["attempts_total"],
                      "pass_rate": round(summ["attempt_pass_rate"]["overall"], 3),
                      "wall_s": round(wall[name], 1)}
    result = {"cells": len(cells), "target": target, "budget_attempts": budget, "runs": rows,
              "per_cell": {"/".join(c): {n: counts[n][c] for n in runs} for c in cells},
              "quota_missed": {n: runs[n][1]["quota"]["missed"] for n in runs if n != "plain"},
              "args": {k: str(v) for k, v in vars(args).items()}}
    (out / "quota_study.json").write_text(json.dumps(result, indent=2))

    print(f"\n{len(cells)} cells (sex x race x age bin), target {target} per cell, "
          f"budget {budget} attempts (the plain run's)\n")
    keys = ("target", "attempts", "images", "pass_rate", "cells_at_target", "short", "min", "median", "max",
            "cv", "wall_s")
    print("| run | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(str(r[k]) for k in keys) + " |")
    for dim, idx in (("race", 1), ("age bin", 2)):
        vals = sorted({c[idx] for c in cells}, key=lambda x: (AGE_BINS.index(x) if idx == 2 else x))
        print(f"\nimages per {dim}:\n| run | " + " | ".join(vals) + " |")
        print("|---" * (len(vals) + 1) + "|")
        for name in runs:
            print(f"| {name} | " + " | ".join(
                str(sum(v for c, v in counts[name].items() if c[idx] == x)) for x in vals) + " |")
    for name in runs:
        missed = result["quota_missed"].get(name)
        if missed:
            print(f"\n{name}: cells short of target (pass rate, 95% CI):")
            for m in missed:
                ci = m["pass_rate_ci95"] or ["-", "-"]
                print(f"  {m['cell']}: {m['accepted']}/{m['target']} after {m['attempts']} "
                      f"attempts, pass rate {m['pass_rate']} ({ci[0]}-{ci[1]})")
    print(f"\nper cell: {out / 'quota_study.json'}")


if __name__ == "__main__":
    main()
