#!/usr/bin/env python
"""Benchmark: scale-out of QC'd generation on Ray, 1, 2 and 4 CPU workers, same run.

Baseline: the in-process executor with one torch thread, measured in this run.
Each Ray run starts a local cluster of --cpus slots, one worker per slot (one
torch thread each), on the bundled demo generator and QC bundle. Throughput is
attempts per second of the generation loop (after the workers have loaded their
models; loading is reported apart). Printed: the ratio of each run to 1 worker,
the scaling efficiency (ratio / workers), and the per-item overhead that Ray adds
(1 Ray worker against the in-process run, per attempt).

On a machine with fewer cores than workers the extra workers only share the
same cores: read the efficiency against the cores this machine has (printed).

    python tools/bench_scale.py                     # 1, 2, 4 workers, 32 prompts
    python tools/bench_scale.py --workers 1,2,4,8 --n 64 --steps 10
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))
WEIGHTS = REPO / "python" / "rv2" / "demo" / "weights"


def config(args):
    from rv2.generate.config import GenerateConfig

    return GenerateConfig.from_dict({
        "batch_size": args.batch_size, "max_attempts": args.max_attempts,
        "sampler": {"steps": args.steps, "guidance": 3.0, "device": "cpu"},
        "qc": {"weights_dir": str(WEIGHTS / "qc")}, "store": {"manifest_every": 10 ** 6}})


def run_inprocess(args, prompts, out):
    import torch
    from rv2.generate.pipeline import generate_dataset

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    s = generate_dataset(prompts, WEIGHTS / "generator", out, config(args), progress=False)
    return s, time.perf_counter() - t0


def run_ray(args, prompts, out, workers):
    import ray
    from rv2.distributed.generate import RayExecutor
    from rv2.generate.pipeline import generate_dataset

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        t0 = time.perf_counter()
        ex = RayExecutor(workers=workers, cpus_per_worker=1, batch_size=args.batch_size)
        s = generate_dataset(prompts, WEIGHTS / "generator", out, config(args), executor=ex,
                             progress=False)
        return s, time.perf_counter() - t0
    finally:
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--n", type=int, default=32, help="prompts")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-attempts", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("RAY_agent_register_timeout_ms", "180000")   # busy hosts: slow agents
    from rv2.testing.prompts import prompts_table

    prompts = prompts_table(args.n, seed=11)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        s, total = run_inprocess(args, prompts, Path(tmp) / "inprocess")
        base = {"run": "in-process", "workers": 1, "attempts": s["this_run"]["attempts"],
                "loop_s": s["this_run"]["wall_s"], "total_s": total}
        for n in [int(x) for x in args.workers.split(",")]:
            s, total = run_ray(args, prompts, Path(tmp) / f"ray{n}", n)
            rows.append({"run": f"ray x{n}", "workers": n, "attempts": s["this_run"]["attempts"],
                         "loop_s": s["this_run"]["wall_s"], "total_s": total,
                         "busy_s": sum(w["busy_s"] for w in s["workers"]["workers"])})
    for r in [base, *rows]:
        r["attempts_per_s"] = r["attempts"] / r["loop_s"]
    one = next(r for r in rows if r["workers"] == 1)
    print(f"# demo generator, {args.n} prompts, {args.steps} steps, batch {args.batch_size}, "
          f"max {args.max_attempts} attempts; this machine: {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'run':<12}{'attempts':>9}{'loop s':>9}{'att/s':>8}{'vs 1 worker':>13}{'efficiency':>12}"
          f"{'start+load s':>14}")
    for r in [base, *rows]:
        ratio = r["attempts_per_s"] / one["attempts_per_s"]
        eff = ratio / r["workers"] if r["run"] != "in-process" else float("nan")
        r.update(ratio_vs_1=ratio, efficiency=eff)
        print(f"{r['run']:<12}{r['attempts']:>9}{r['loop_s']:>9.2f}{r['attempts_per_s']:>8.2f}"
              f"{ratio:>13.2f}{eff:>12.2f}{r['total_s'] - r['loop_s']:>14.1f}")
    per_item = one["loop_s"] / one["attempts"] - base["loop_s"] / base["attempts"]
    busy = one["busy_s"] / one["attempts"]
    print(f"Ray overhead per attempt (1 worker vs in-process): {per_item * 1000:+.1f} ms "
          f"({per_item / (base['loop_s'] / base['attempts']):+.1%}); driver round trip beyond the "
          f"worker's busy time: {(one['loop_s'] / one['attempts'] - busy) * 1000:.1f} ms per attempt")
    if args.json:
        args.json.write_text(json.dumps({"base": base, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
