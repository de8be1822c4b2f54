"""Bootstrap AUROC + AP for two models, paired: native kernels vs a careful numpy baseline.

n = 60,000 cases, 8 labels, B = 1,000 resamples, both metrics, two models on the
same resamples. The baseline is numpy written the careful way: draws from numpy's
own generator (rng.integers, bincount), bootstrap weights shared by every label and
model, one sort per label, tie groups summed with np.add.reduceat (the kernels'
twin); the scikit-learn loop (roc_auc_score and average_precision_score on
resampled indices) is shown for reference. Both are timed on a subset of
resamples and scaled linearly to B. The native kernels run all B through
resample_auc_ap, by image and by patient (3 images per patient), drawing their
resamples themselves, 16 at a time, in cache: best of --reps runs after a warm-up,
as the bandwidth of the bound is. The streaming bound is the time to
read the weights each resample touches (one float32 per score row and case) at
the memory bandwidth measured in the same run (numpy sum over 512 MiB, all
cores). Also: the paired permutation test of AP (R = 1,000), native against the
careful numpy twin (swaps from rng.random).

    .venv/bin/python tools/bench_stats.py [--n 60000] [--boot 1000] [--sk-boot 3]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60_000)
    ap.add_argument("--labels", type=int, default=8)
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--sk-boot", type=int, default=3, help="resamples timed for scikit-learn")
    ap.add_argument("--twin-boot", type=int, default=50, help="resamples timed for the twin")
    ap.add_argument("--perm", type=int, default=1000)
    ap.add_argument("--twin-perm", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reps", type=int, default=3, help="timed native runs (best taken)")
    args = ap.parse_args()

    from rv2 import _native
    from rv2.evaluate.bootstrap import resample_auc_ap, resample_indices
    from rv2.evaluate.kernels import boot_auc_ap, perm_auc_ap
    from rv2.evaluate.permutation import permutation_diffs
    from sklearn.metrics import average_precision_score, roc_auc_score

    if not _native.HAS_NATIVE:
        raise SystemExit(f"rv2._C is not built ({_native.NATIVE_ERROR}); run `make native`")
    n, L, B = args.n, args.labels, args.boot
    rng = np.random.default_rng(args.seed)
    y = (rng.random((n, L)) < 0.15).astype(np.float64)
    y[rng.random((n, L)) < 0.05] = np.nan  # unknown labels, left out
    latent = rng.normal(size=(n, L))
    models = [np.round(1 / (1 + np.exp(-(latent + y * 1.2 + rng.normal(scale=s, size=(n, L))))), 4)
              for s in (1.0, 0.8)]  # rounded: ties, as real model outputs have
    threads = _native.native_module().num_threads()
    print(f"n = {n}, labels = {L}, resamples = {B}, models = 2 (paired), metrics = AUROC + AP, "
          f"native threads = {threads}, cores = {os.cpu_count()}")

    def clock():
        return time.perf_counter(), time.process_time()

    def since(c0, scale=1.0):
        return ((time.perf_counter() - c0[0]) * scale, (time.process_time() - c0[1]) * scale)

    # scikit-learn on resampled indices (subset, scaled to B)
    t = clock()
    idx = next(resample_indices(n, args.sk_boot, seed=args.seed))
    for rows in idx:
        for s in models:
            for j in range(L):
                yy, ss = y[rows, j], s[rows, j]
                k = ~np.isnan(yy)
                roc_auc_score(yy[k], ss[k])
                average_precision_score(yy[k], ss[k])
    t_sk = since(t, B / args.sk_boot)

    S_scores = np.ascontiguousarray(np.concatenate([m.T for m in models]))
    S_labels = np.ascontiguousarray(np.tile(y.T, (2, 1)))

    def careful_numpy(rows, units=None):
        """numpy's generator for the draws, then the twin kernels on shared weights."""
        U = n if units is None else int(units.max()) + 1
        draws = np.random.default_rng(args.seed).integers(0, U, size=(rows, U))
        flat = (draws + (np.arange(rows) * U)[:, None]).ravel()
        w = np.bincount(flat, minlength=rows * U).astype(np.int32).reshape(rows, U)
        return boot_auc_ap(S_scores, S_labels, w, cluster=units, native=False)

    t = clock()
    careful_numpy(args.twin_boot)
    t_twin = since(t, B / args.twin_boot)

    def best(run, reps=args.reps):
        """Best (wall, CPU) of `reps` runs after one untimed warm-up, like the bound's."""
        out = run()
        times = []
        for _ in range(reps):
            t = clock()
            out = run()
            times.append(since(t))
        return out, min(times)

    r, t_nat = best(lambda: resample_auc_ap(y, models, n_boot=B, seed=args.seed, native=True))
    assert np.isfinite(r.auc).all()
    patients = np.arange(n) // 3
    _, t_pat = best(lambda: resample_auc_ap(y, models, n_boot=B, seed=args.seed,
                                            clusters=patients, native=True))
    t = clock()
    careful_numpy(args.twin_boot, patients.astype(np.int32))
    t_pat_twin = since(t, B / args.twin_boot)
    # the path rv2 evaluate runs: sex x race and sex x age subgroups (8 + 8, some cases in
    # none) plus all cases, and a weighted count column per group (underdiagnosis)
    sub = rng.integers(-1, 8, size=(2, n)).astype(np.int32)
    fam = np.stack([sub[0], np.where(sub[1] >= 0, sub[1] + 8, -1), np.full(n, 16)]).astype(np.int32)
    ud = {"ud_den": rng.random((n, 17)) < 0.3}
    _, t_grp = best(lambda: resample_auc_ap(y, models, n_boot=B, seed=args.seed, groups=fam,
                                            n_groups=17, counts=ud, native=True))
    bw = _bandwidth(threads)
    touched = 2 * L * int(np.isfinite(y).sum(axis=0).mean())  # score rows x known cases
    bound_boot = B * touched * 4 / bw
    bound_perm = args.perm * L * 2 * n * 4 / bw

    # the same resamples agree: native vs twin vs scikit-learn on the first resamples
    tw = resample_auc_ap(y, models, n_boot=2, seed=args.seed, native=False)
    dev = max(np.abs(tw.auc - r.auc[:, :2]).max(), np.abs(tw.ap - r.ap[:, :2]).max())
    rows = idx[0]
    k = ~np.isnan(y[rows, 0])
    dev_sk = max(abs(r.auc[0, 0, 0, 0] - roc_auc_score(y[rows, 0][k], models[0][rows, 0][k])),
                 abs(r.ap[0, 0, 0, 0] - average_precision_score(y[rows, 0][k],
                                                                 models[0][rows, 0][k])))

    t = clock()
    swaps = (np.random.default_rng(args.seed).random((args.twin_perm, n)) < 0.5).astype(np.uint8)
    for j in range(L):
        perm_auc_ap(models[0][:, j], models[1][:, j], y[:, j], swaps, native=False)
    t_ptwin = since(t, args.perm / args.twin_perm)
    _, t_pnat = best(lambda: permutation_diffs(y, models[0], models[1], metric="ap",
                                               n_perm=args.perm, seed=args.seed, native=True))

    per_thread_mb = 2 * 16 * n / 2**20
    def table(title, base_name, rows):
        print()
        print(f"{title:<46} {'wall s':>8} {'CPU s':>8} {'x wall':>8} {'x CPU':>8}   (vs {base_name})")
        base = rows[0][1]
        for name, (wall, cpu) in rows:
            print(f"{name:<46} {wall:>8.2f} {cpu:>8.2f} {base[0] / wall:>7.1f}x {base[1] / cpu:>7.1f}x")

    table(f"bootstrap: AUROC+AP, 2 models, {L} labels", "careful numpy", [
        (f"careful numpy, by image (scaled from {args.twin_boot})", t_twin),
        (f"careful numpy, by patient (scaled from {args.twin_boot})", t_pat_twin),
        (f"scikit-learn loop (scaled from {args.sk_boot} resamples)", t_sk),
        (f"native rv2._C, by image (all {B})", t_nat),
        (f"native rv2._C, by patient (all {B})", t_pat),
        (f"streaming bound ({bw / 1e9:.1f} GB/s, {touched} float32 per resample)",
         (bound_boot, bound_boot * threads))])
    table(f"permutation test of AP, {L} labels", "careful numpy", [
        (f"careful numpy twin (scaled from {args.twin_perm} permutations)", t_ptwin),
        (f"native rv2._C (all {args.perm} permutations)", t_pnat),
        (f"streaming bound ({L * 2 * n} float32 per permutation)",
         (bound_perm, bound_perm * threads))])
    print()
    print(f"native with 17 subgroups in 3 families and a weighted count per group (what rv2 "
          f"evaluate runs): {t_grp[0]:.2f} s wall, {t_grp[1]:.2f} s CPU")
    print(f"native vs twin max |diff| on shared resamples: {dev:.2e}; native vs scikit-learn "
          f"on resample 0: {dev_sk:.2e}")
    print(f"memory: the native bootstrap holds {per_thread_mb:.1f} MiB per thread (one block of 16 "
          f"resamples' byte counts and their scratch); no weight matrix is written")
    ratio, pratio = t_twin[0] / t_nat[0], t_ptwin[0] / t_pnat[0]

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    print(f"goal native >= 10x careful numpy (wall): bootstrap {verdict(ratio >= 10)} "
          f"({ratio:.1f}x), permutation {verdict(pratio >= 10)} ({pratio:.1f}x)")
    b_boot, b_perm = t_nat[0] / bound_boot, t_pnat[0] / bound_perm
    print(f"goal native within 2x of the streaming bound (wall): bootstrap "
          f"{verdict(b_boot <= 2)} ({b_boot:.1f}x), permutation {verdict(b_perm <= 2)} "
          f"({b_perm:.1f}x); patient / image native: {t_pat[0] / t_nat[0]:.2f}. CPU s include "
          f"every thread; wall times suffer when other jobs share the cores (load average now "
          f"{os.getloadavg()[0]:.1f}).")


def _bandwidth(threads: int, mib: int = 512) -> float:
    """Bytes per second numpy reads from a 512 MiB float32 array, split over the
    native kernels' threads (best of 3)."""
    from concurrent.futures import ThreadPoolExecutor

    a = np.ones(mib << 18, np.float32)
    parts = np.array_split(a, max(1, threads))
    best = float("inf")
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for _ in range(3):
            t0 = time.perf_counter()
            list(pool.map(np.sum, parts))
            best = min(best, time.perf_counter() - t0)
    return a.nbytes / best


if __name__ == "__main__":
    main()
