#!/usr/bin/env python3
"""Compare two `rv2 demo` output folders: are the results the same?

Used to prove that a refactor changes no result: run the demo before and after
(`rv2 demo --size small --out A`, then `... --out B`), then

    python tools/compare_demo_runs.py A B

Compared: every Parquet table (manifests, prompts, predictions, QC log) cell by
cell, every CSV table, every synthetic image byte by byte, and the metrics in
every report.json / summary.json with wall-clock fields left out. Exit status 0
when all agree, 1 with a list of differences otherwise.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd

# keys whose values are timings, paths or dates: they differ between any two runs
VOLATILE = ("wall_s", "seconds", "images_per_s", "accepted_per_s", "stage_seconds", "created",
            "time", "elapsed", "store", "manifest", "qc_log", "path", "out", "argv", "per_s",
            "rv2_version", "executor", "speed", "duration", "utc")


def _volatile(key: str) -> bool:
    k = key.lower()
    return any(v in k for v in VOLATILE)


def _same(a, b, where: str, diffs: list[str], roots: tuple[str, str] = ("", "")) -> None:
    if isinstance(a, str) and isinstance(b, str) and roots[0]:
        # paths inside each run folder name that folder: compare them relative to it
        a, b = a.replace(roots[0], "<run>"), b.replace(roots[1], "<run>")
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if _volatile(str(k)):
                continue
            if k not in a or k not in b:
                diffs.append(f"{where}.{k}: only in {'B' if k not in a else 'A'}")
                continue
            _same(a[k], b[k], f"{where}.{k}", diffs, roots)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            diffs.append(f"{where}: {len(a)} vs {len(b)} items")
            return
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]", diffs, roots)
    elif isinstance(a, float) and isinstance(b, float):
        if not (a == b or (math.isnan(a) and math.isnan(b))):
            diffs.append(f"{where}: {a!r} vs {b!r}")
    elif a != b:
        diffs.append(f"{where}: {a!r} vs {b!r}")


def compare(a: Path, b: Path) -> list[str]:
    diffs: list[str] = []
    files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    files_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    for rel in sorted(files_a ^ files_b):
        if rel.suffix in (".parquet", ".csv", ".png", ".jpg") or rel.name in ("report.json", "summary.json"):
            diffs.append(f"{rel}: only in {'A' if rel in files_a else 'B'}")
    for rel in sorted(files_a & files_b):
        pa, pb = a / rel, b / rel
        if rel.suffix == ".parquet":
            da, db = pd.read_parquet(pa), pd.read_parquet(pb)
            keep = [c for c in da.columns if not _volatile(c) or c == "path"]
            if list(da.columns) != list(db.columns):
                diffs.append(f"{rel}: columns differ")
            elif not da[keep].equals(db[keep]):
                bad = [c for c in keep if not da[c].equals(db[c])]
                diffs.append(f"{rel}: values differ in {bad[:8]}")
        elif rel.suffix == ".csv" and not rel.name.endswith(".rv2.json"):
            if "history" in rel.name:   # per-epoch timings
                da, db = pd.read_csv(pa), pd.read_csv(pb)
                keep = [c for c in da.columns if not _volatile(c)]
                if not da[keep].equals(db[keep]):
                    diffs.append(f"{rel}: values differ")
            elif pa.read_bytes() != pb.read_bytes():
                diffs.append(f"{rel}: content differs")
        elif rel.suffix in (".png", ".jpg"):
            if pa.read_bytes() != pb.read_bytes() and "figure" not in rel.as_posix():
                diffs.append(f"{rel}: image bytes differ")
        elif rel.name in ("report.json", "summary.json", "thresholds.json", "normalization.json"):
            _same(json.loads(pa.read_text()), json.loads(pb.read_text()), str(rel), diffs,
                  (str(a.resolve()), str(b.resolve())))
    return diffs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    args = ap.parse_args()
    diffs = compare(args.a, args.b)
    n = sum(1 for _ in args.a.rglob("*.parquet"))
    if diffs:
        print(f"{len(diffs)} difference(s):")
        print("\n".join(f"  {d}" for d in diffs[:200]))
        return 1
    print(f"same results: {n} Parquet tables, every CSV, image and metrics file agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
