"""Bootstrap AUROC + AP for two models, paired: scikit-learn loop vs numpy twin vs native.

n = 60,000 cases, 8 labels, B = 1,000 resamples, both metrics, two models on the
same resamples (the setting of issue 8). The scikit-learn loop (roc_auc_score and
average_precision_score on resampled indices) and the numpy twin are timed on a
subset of resamples and scaled linearly to B; the native kernels run all B.
Also: the paired permutation test of AP (R = 1,000) native vs twin (subset, scaled).

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
    args = ap.parse_args()

    from sklearn.metrics import average_precision_score, roc_auc_score

    from rv2 import _native
    from rv2.evaluate.bootstrap import resample_auc_ap, resample_indices
    from rv2.evaluate.permutation import permutation_diffs

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

    # scikit-learn on resampled indices (subset, scaled to B)
    t = time.perf_counter()
    idx = next(resample_indices(n, args.sk_boot, seed=args.seed))
    for rows in idx:
        for s in models:
            for j in range(L):
                yy, ss = y[rows, j], s[rows, j]
                k = ~np.isnan(yy)
                roc_auc_score(yy[k], ss[k])
                average_precision_score(yy[k], ss[k])
    t_sk = (time.perf_counter() - t) * B / args.sk_boot

    t = time.perf_counter()
    resample_auc_ap(y, models, n_boot=args.twin_boot, seed=args.seed, native=False)
    t_twin = (time.perf_counter() - t) * B / args.twin_boot

    t = time.perf_counter()
    r = resample_auc_ap(y, models, n_boot=B, seed=args.seed, native=True)
    t_nat = time.perf_counter() - t
    assert np.isfinite(r.auc).all()

    # the same resamples agree: native vs twin vs scikit-learn on the first resamples
    tw = resample_auc_ap(y, models, n_boot=2, seed=args.seed, native=False)
    dev = max(np.abs(tw.auc - r.auc[:, :2]).max(), np.abs(tw.ap - r.ap[:, :2]).max())
    rows = idx[0]
    k = ~np.isnan(y[rows, 0])
    dev_sk = max(abs(r.auc[0, 0, 0, 0] - roc_auc_score(y[rows, 0][k], models[0][rows, 0][k])),
                 abs(r.ap[0, 0, 0, 0] - average_precision_score(y[rows, 0][k],
                                                                 models[0][rows, 0][k])))

    t = time.perf_counter()
    permutation_diffs(y, models[0], models[1], metric="ap", n_perm=args.twin_perm,
                      seed=args.seed, native=False)
    t_ptwin = (time.perf_counter() - t) * args.perm / args.twin_perm
    t = time.perf_counter()
    permutation_diffs(y, models[0], models[1], metric="ap", n_perm=args.perm, seed=args.seed,
                      native=True)
    t_pnat = time.perf_counter() - t

    peak_chunk_mb = 16 * n * min(B, (128 << 20) // (16 * n)) / 2**20
    print()
    print(f"{'bootstrap (AUROC+AP, 2 models, 8 labels)':<44} {'seconds':>9} {'vs sklearn':>11}")
    print(f"{'scikit-learn loop (scaled from %d resamples)' % args.sk_boot:<44} {t_sk:>9.1f} "
          f"{1.0:>10.1f}x")
    print(f"{'numpy twin (scaled from %d resamples)' % args.twin_boot:<44} {t_twin:>9.1f} "
          f"{t_sk / t_twin:>10.1f}x")
    print(f"{'native rv2._C (all %d resamples)' % B:<44} {t_nat:>9.2f} {t_sk / t_nat:>10.1f}x")
    print()
    print(f"{'permutation test of AP (2 models, 8 labels)':<44} {'seconds':>9} {'vs twin':>11}")
    print(f"{'numpy twin (scaled from %d permutations)' % args.twin_perm:<44} {t_ptwin:>9.1f} "
          f"{1.0:>10.1f}x")
    print(f"{'native rv2._C (all %d permutations)' % args.perm:<44} {t_pnat:>9.2f} "
          f"{t_ptwin / t_pnat:>10.1f}x")
    print()
    print(f"native vs twin max |diff| on shared resamples: {dev:.2e}; native vs scikit-learn "
          f"on resample 0: {dev_sk:.2e}")
    print(f"memory: resamples in chunks of <= 128 MiB (draws int64 + counts int32 + float32 transposed copy, "
          f"{peak_chunk_mb:.0f} MiB here); no B x n float64 matrix")
    target = t_sk / t_nat >= 100
    print(f"target native >= 100x scikit-learn: {'met' if target else 'NOT met'} "
          f"({t_sk / t_nat:.0f}x)")


if __name__ == "__main__":
    main()
