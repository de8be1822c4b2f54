#!/usr/bin/env python3
"""Measure early QC rejection and fewer-step samplers on the demo world
(docs/regeneration-study.md, issue 18 parts 1 and 2).

    python tools/study_regeneration.py probe    --out OUT [--prompts 160]
    python tools/study_regeneration.py early    --out OUT
    python tools/study_regeneration.py verify   --out OUT [--prompts 48]
    python tools/study_regeneration.py samplers --out OUT

probe: the bundled demo generator (PNDM-75, guidance 3) and QC bundle on held-out
  phantom prompts (`rv2.demo.eval_data`). Every attempt runs to the end; the QC of
  the predicted final image is recorded after a grid of fractions of the UNet
  calls (`rv2.generate.early_reject`, never stopping). A prompt's next attempt
  (its next seed, as `rv2 generate` would draw it) runs when this one fails QC at
  the end or would be stopped by the most aggressive policy of the sweep, so every
  policy of the sweep can be replayed exactly. Writes OUT/probe.parquet and the
  attempt-0 images (the PNDM-75 reference) OUT/reference.npz.
early: replays policies (check points x margin) on the probe: UNet calls per
  accepted image against running every attempt to the end, and false early
  rejections (stopped attempts that pass QC at the end). OUT/early.json + table.
verify: runs `generate_dataset` with early rejection on the first prompts, with the
  in-process and the python continuous executor, and compares each store's
  accounting with the replay of the same policy (they must agree).
samplers: each sampler at its steps on the attempt-0 seeds: QC pass rates (Wilson
  95% CIs), MS-SSIM to the PNDM-75 image of the same seed (bootstrap CI), FID to
  the PNDM-75 set on the demo feature network, UNet calls per accepted image.
  OUT/samplers.json + table.

One torch thread (set --threads); phantom-world figures only.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
MARGINS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
CHECK_SETS = ((0.2,), (0.3,), (0.5,), (0.3, 0.5), (0.2, 0.4, 0.6))
# (sampler, steps, attempt whose seeds are drawn): attempt 1 of PNDM-75 is the floor, the
# distance between two PNDM-75 sets of other seeds
SAMPLERS = (("pndm", 75, 0), ("pndm", 75, 1), ("pndm", 20, 0), ("ddim", 50, 0), ("dpmpp2m", 30, 0),
            ("dpmpp2m", 20, 0), ("unipc", 20, 0), ("euler", 30, 0),
            # where the demo generator starts to differ
            ("pndm", 10, 0), ("ddim", 10, 0), ("dpmpp2m", 10, 0), ("unipc", 10, 0), ("euler", 10, 0),
            ("dpmpp2m", 5, 0), ("unipc", 5, 0))
CHOSEN = ((0.2,), 0.3)  # the policy of the per-race table and of `verify`
GUIDANCE = 3.0         # the demo generator's (rv2 demo, weights/README.md)
TOLERANCE = 16.0       # the authors' age tolerance, as rv2 generate's default
MAX_ATTEMPTS = 4


WEIGHTS_DIR = None     # --weights: a folder laid out as rv2/demo/weights (generator/, qc/, eval/)


def weights():
    from rv2.demo.pipeline import bundled_weights

    return bundled_weights(WEIGHTS_DIR)


def prompts_table(out: Path, n: int):
    from rv2.demo.eval_data import write_validation_set
    from rv2.generate.pipeline import load_prompts

    path = write_validation_set(out / "world", n=n)
    return path, load_prompts(path)


def load_stages(sampler: str = "pndm"):
    import torch
    from rv2.generate.eager import eager_stages
    from rv2.generate.slot_samplers import make_scheduler
    from rv2.models.qc_networks import load_qc_models
    from rv2.models.sd import load_components

    w = weights()
    st = eager_stages(load_components(w["generator"], torch_dtype=torch.float32), "cpu",
                      torch.float32, qc=load_qc_models(w["qc"], "cpu"))
    st.scheduler = make_scheduler(sampler, st.scheduler)
    return st


def n_calls_of(scheduler, steps: int) -> int:
    import copy

    s = copy.deepcopy(scheduler)
    s.set_timesteps(steps, device="cpu")
    return len(s.timesteps)


# ------------------------------------------------------------------ probe

def probe(out: Path, n_prompts: int, batch: int, steps: int = 75) -> None:
    import pandas as pd
    import torch
    from rv2.generate.config import EarlyRejectConfig
    from rv2.generate.early_reject import EarlyRejector, check_calls, denoise_checked
    from rv2.generate.qc_rules import judge
    from rv2.generate.sampler import latent_shape, latents_for, to_gray

    _, df = prompts_table(out, n_prompts)
    st = load_stages("pndm")
    n_calls = n_calls_of(st.scheduler, steps)
    grid_calls = check_calls(GRID, n_calls)
    shape = latent_shape(st.denoiser, st.decoder)
    bases = {r["prompt_id"]: r for r in df.to_dict("records")}
    uncond = st.text_encoder.encode([""])
    seen: list = []
    never = EarlyRejectConfig(at=list(GRID), margin=1.0, age_margin=1e9)
    rej = EarlyRejector(never, n_calls, st.decoder, st.qc, st.scheduler.alphas_cumprod, TOLERANCE,
                        on_check=seen.extend)
    rows, ref = [], {}
    todo = [(p, 0) for p in bases]
    t0 = time.perf_counter()
    while todo:
        nxt = []
        for i in range(0, len(todo), batch):
            items = todo[i:i + batch]
            b = [bases[p] for p, _ in items]
            cond = st.text_encoder.encode([x["prompt"] for x in b])
            lat, seeds = latents_for([p for p, _ in items], [a for _, a in items], shape)
            seen.clear()
            lat, stopped = denoise_checked(st.denoiser, st.scheduler, cond, uncond, lat, steps,
                                           GUIDANCE, rej, b)
            assert not stopped
            img = to_gray(st.decoder.decode(lat))
            pred = st.qc.predict(img)
            fin = judge(pred["p_female"], pred["race_probs"], pred["age"], [x["sex"] for x in b],
                        [x["race"] for x in b], [x["age"] for x in b], TOLERANCE)
            by_row: dict = {}
            for c in seen:     # checks come in call order, rows numbered within the check
                by_row.setdefault(c.call, []).append(c)
            for j, ((pid, a), v) in enumerate(zip(items, fin)):
                rec = {"prompt_id": pid, "attempt": a, "seed": seeds[j], "sex": b[j]["sex"],
                       "race": b[j]["race"], "age": b[j]["age"], "pass": v["qc_pass"],
                       "fail": v["qc_fail_reasons"], "n_calls": n_calls}
                for k in grid_calls:
                    c = by_row[k + 1][j]
                    for att, s in c.scores.items():
                        rec[f"{att}@{k + 1}"] = s
                rows.append(rec)
                if a == 0:
                    ref[pid] = np.round(img[j, 0].numpy() * 255).astype(np.uint8)
                if a + 1 < MAX_ATTEMPTS and (not v["qc_pass"] or aggressive_stop(rec, grid_calls)):
                    nxt.append((pid, a + 1))
            print(f"  attempts {len(rows)}  ({time.perf_counter() - t0:.0f} s)", flush=True)
        todo = nxt
    pd.DataFrame(rows).to_parquet(out / "probe.parquet")
    pids = sorted(ref)
    np.savez_compressed(out / "reference.npz", images=np.stack([ref[p] for p in pids]),
                        prompt_ids=np.array(pids))
    meta = {"prompts": len(bases), "attempts": len(rows), "steps": steps, "n_calls": n_calls,
            "guidance": GUIDANCE, "grid": list(GRID), "seconds": round(time.perf_counter() - t0, 1),
            "threads": torch.get_num_threads()}
    (out / "probe.json").write_text(json.dumps(meta, indent=2))
    print(json.dumps(meta))


def _scores(rec, k1: int) -> dict:
    return {a: rec[f"{a}@{k1}"] for a in ("sex", "race", "age")}


def stops_at(rec, calls, margin: float, age_margin: float) -> int | None:
    """The calls used when the policy stops this attempt, else None (the product's rule)."""
    from rv2.generate.early_reject import past_margin

    for k in calls:
        s = _scores(rec, k + 1)
        if past_margin({a: np.array([v]) for a, v in s.items()}, margin, age_margin)[0]:
            return k + 1
    return None


def aggressive_stop(rec, grid_calls) -> bool:
    return stops_at(rec, grid_calls, min(MARGINS), min(MARGINS) * TOLERANCE) is not None


# ------------------------------------------------------------------ replay

def replay(probe_df, fractions, margin: float, age_margin: float) -> dict:
    """The store `rv2 generate` would make with this policy (None: no early rejection)."""
    from rv2.generate.early_reject import check_calls

    by = {(r["prompt_id"], r["attempt"]): r for r in probe_df.to_dict("records")}
    n_calls = int(probe_df["n_calls"].iloc[0])
    calls = check_calls(fractions, n_calls) if fractions else []
    out = {"attempts": 0, "accepted": 0, "failed": 0, "early_stopped": 0, "false_early": 0,
           "unet_calls": 0, "checks": 0, "accepted_prompts": [], "stops": {}}
    for pid in sorted({p for p, _ in by}):
        for a in range(MAX_ATTEMPTS):
            r = by.get((pid, a))
            if r is None:
                raise RuntimeError(f"probe lacks attempt {a} of {pid}: the sweep needs it")
            out["attempts"] += 1
            stop = stops_at(r, calls, margin, age_margin) if calls else None
            out["checks"] += sum(1 for k in calls if stop is None or k + 1 <= stop)
            if stop is not None:
                out["early_stopped"] += 1
                out["false_early"] += bool(r["pass"])
                out["unet_calls"] += stop
                out["stops"][f"{pid}/{a}"] = stop
                continue
            out["unet_calls"] += n_calls
            if r["pass"]:
                out["accepted"] += 1
                out["accepted_prompts"].append(pid)
                break
            out["failed"] += 1
    return out


def check_cost(batch: int = 32, repeat: int = 3) -> dict:
    """Seconds of one denoiser call (guided: 2 x batch rows) against one check (decode of
    the predicted image + QC) for `batch` images, best of `repeat`, same process."""
    import torch
    from rv2.demo.eval_data import phantom_cases
    from rv2.generate.sampler import latent_shape, to_gray

    st = load_stages("pndm")
    shape = latent_shape(st.denoiser, st.decoder)
    cond = st.text_encoder.encode([p for _, p in phantom_cases(batch)])
    ctx = torch.cat([st.text_encoder.encode([""]).expand(batch, -1, -1), cond])
    x = torch.randn(2 * batch, *shape, generator=torch.Generator().manual_seed(0))
    t = torch.full((2 * batch,), 500)

    from bench_eval_generator import best_time  # tools/ is this script's folder

    with torch.inference_mode():
        unet = best_time(lambda: st.denoiser.predict_noise(x, t, ctx), repeat)
        check = best_time(lambda: st.qc.predict(to_gray(st.decoder.decode(x[:batch]))), repeat)
    return {"batch": batch, "unet_call_s": round(unet, 4), "check_s": round(check, 4),
            "check_in_unet_calls": round(check / unet, 3), "threads": torch.get_num_threads()}


def early(out: Path) -> dict:
    import pandas as pd

    df = pd.read_parquet(out / "probe.parquet")
    base = replay(df, (), 0, 0)
    b_per = base["unet_calls"] / base["accepted"]
    cost = check_cost()
    rows = []
    for fr in CHECK_SETS:
        for m in MARGINS:
            r = replay(df, fr, m, m * TOLERANCE)
            per = r["unet_calls"] / r["accepted"] if r["accepted"] else float("nan")
            rows.append({"at": list(fr), "margin": m, "age_margin": m * TOLERANCE,
                         "attempts": r["attempts"], "accepted": r["accepted"],
                         "early_stopped": r["early_stopped"], "false_early": r["false_early"],
                         "false_early_pct": 100 * r["false_early"] / r["attempts"],
                         "unet_per_accepted": per, "saving_pct": 100 * (1 - per / b_per),
                         "checks_per_accepted": r["checks"] / r["accepted"] if r["accepted"] else None})
            # a check (decode + QC) in UNet calls of this machine: the saving net of checks
            rows[-1]["net_saving_pct"] = 100 * (1 - (per + rows[-1]["checks_per_accepted"]
                                                     * cost["check_in_unet_calls"]) / b_per)
    att = df[df.attempt == 0]
    fail_share = 1 - att["pass"].mean()
    res = {"baseline": {k: v for k, v in base.items() if k not in ("accepted_prompts", "stops")}
           | {"unet_per_accepted": b_per, "attempt0_fail_rate": fail_share,
              "attempt_fail_rate": 1 - base["accepted"] / base["attempts"]},
           "policies": rows,
           "fail_reasons_attempt0": att["fail"].value_counts().to_dict()}
    # per requested race at the chosen policy: the saving grows with the cell's failure rate
    res["by_race"] = {}
    for race, sub in df.groupby("race"):
        b = replay(sub, (), 0, 0)
        p = replay(sub, CHOSEN[0], CHOSEN[1], CHOSEN[1] * TOLERANCE)
        bp, pp = b["unet_calls"] / b["accepted"], p["unet_calls"] / p["accepted"]
        res["by_race"][race] = {"prompts": int(sub.prompt_id.nunique()),
                                "attempt_fail_rate": 1 - b["accepted"] / b["attempts"],
                                "unet_per_accepted": bp, "with_early": pp,
                                "saving_pct": 100 * (1 - pp / bp), "false_early": p["false_early"],
                                "attempts_with_early": p["attempts"]}
    res["check_cost"] = cost
    # the ceiling: stop every failing attempt after zero calls
    res["ceiling_saving_pct"] = 100 * base["failed"] * int(df["n_calls"].iloc[0]) / base["unet_calls"]
    (out / "early.json").write_text(json.dumps(res, indent=2, default=float))
    print(f"baseline: {base['attempts']} attempts, {base['accepted']} accepted, "
          f"{b_per:.2f} UNet calls per accepted image; attempt fail rate "
          f"{res['baseline']['attempt_fail_rate']:.3f}; ceiling saving {res['ceiling_saving_pct']:.1f}%")
    print(f"\nper requested race at check {CHOSEN[0]}, margin {CHOSEN[1]}:")
    print("| race | prompts | attempt fail rate | UNet calls / accepted | with early rejection | saving "
          "| false early |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for race, x in res["by_race"].items():
        print(f"| {race} | {x['prompts']} | {x['attempt_fail_rate']:.3f} | {x['unet_per_accepted']:.2f} "
              f"| {x['with_early']:.2f} | {x['saving_pct']:.1f}% | {x['false_early']} |")
    print(f"\ncheck cost: {json.dumps(res['check_cost'])}\n")
    print("| check at | margin (sex/race; age years) | attempts | early-stopped | false early (% of attempts) "
          "| UNet calls / accepted | saving | checks / accepted | saving net of checks |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {', '.join(f'{f:.0%}' for f in r['at'])} | {r['margin']:.1f}; {r['age_margin']:.1f} "
              f"| {r['attempts']} | {r['early_stopped']} | {r['false_early']} "
              f"({r['false_early_pct']:.1f}%) | {r['unet_per_accepted']:.2f} | {r['saving_pct']:.1f}% "
              f"| {r['checks_per_accepted']:.2f} | {r['net_saving_pct']:.1f}% |")
    return res


# ------------------------------------------------------------------ verify

def verify(out: Path, n_prompts: int, fractions, margin: float, batch: int) -> dict:
    import pandas as pd
    from rv2.generate.config import GenerateConfig
    from rv2.generate.executor import InProcessExecutor
    from rv2.generate.pipeline import generate_dataset
    from rv2.runtime.continuous_executor import ContinuousExecutor

    w = weights()
    path, df = prompts_table(out, int(pd.read_parquet(out / "probe.parquet").prompt_id.nunique()))
    sub = df.iloc[:n_prompts]
    probe_df = pd.read_parquet(out / "probe.parquet")
    probe_df = probe_df[probe_df.prompt_id.isin(set(sub.prompt_id))]
    want = replay(probe_df, fractions, margin, margin * TOLERANCE)
    res = {"replay": {k: v for k, v in want.items() if k not in ("accepted_prompts", "stops")}}
    for name, ex in (("inprocess", InProcessExecutor(batch)),
                     ("python", ContinuousExecutor(capacity=batch, backend="python"))):
        cfg = GenerateConfig().validate()
        cfg.sampler.steps, cfg.sampler.guidance, cfg.batch_size = 75, GUIDANCE, batch
        cfg.qc.weights_dir = str(w["qc"])
        cfg.early_reject.at, cfg.early_reject.margin = list(fractions), margin
        cfg.early_reject.age_margin = margin * TOLERANCE
        store = out / f"verify-{name}"
        t0 = time.perf_counter()
        s = generate_dataset(sub, w["generator"], store, cfg, executor=ex, progress=False)
        acc = s["attempts"]
        recs = [json.loads(x) for x in (store / "journal.jsonl").read_text().splitlines()] \
            if (store / "journal.jsonl").is_file() else []
        stops = {f"{r['prompt_id']}/{r['attempt']}": r["qc_early_stop_call"] for r in recs
                 if r.get("qc_early_stop_call") is not None}
        agree = (acc["accepted"] == want["accepted"] and acc["early_stopped"] == want["early_stopped"]
                 and acc["denoiser_calls"] == want["unet_calls"]
                 and (not recs or stops == want["stops"]))
        res[name] = {**acc, "agrees_with_replay": agree, "seconds": round(time.perf_counter() - t0, 1)}
        print(name, json.dumps(res[name]))
    (out / "verify.json").write_text(json.dumps(res, indent=2))
    return res


# ------------------------------------------------------------------ samplers

def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float, float]:
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return p, max(0.0, c - h), min(1.0, c + h)


def mcnemar(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value of b against c discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def samplers(out: Path, batch: int) -> dict:
    import pandas as pd
    import torch
    from rv2.evaluate.feature_nets import load_bundle_net
    from rv2.evaluate.generator_metrics import (
        MSSSIM_WEIGHTS,
        bootstrap_mean_ci,
        fid_from_features,
        ms_ssim,
    )
    from rv2.generate.qc_rules import judge
    from rv2.generate.sampler import denoise, latent_shape, latents_for, to_gray

    _, df = prompts_table(out, int(pd.read_parquet(out / "probe.parquet").prompt_id.nunique()))
    ref = np.load(out / "reference.npz")
    ref_img = dict(zip(ref["prompt_ids"].tolist(), ref["images"]))
    pids = df["prompt_id"].tolist()
    bases = df.to_dict("records")
    net = load_bundle_net(weights()["generator"].parent / "eval", "inception", "cpu")
    wts = np.asarray(MSSSIM_WEIGHTS[:3], np.float64)
    wts = (wts / wts.sum()).tolist()    # 3 scales, 7 px window: 64 px images

    def as_float(u8):
        return torch.from_numpy(np.ascontiguousarray(u8)).float().div(255).unsqueeze(1)

    ref_stack = np.stack([ref_img[p] for p in pids])
    ref_feat = net.features(as_float(ref_stack))
    results, ref_pass = [], None
    for name, steps, attempt in SAMPLERS:
        st = load_stages(name)
        shape = latent_shape(st.denoiser, st.decoder)
        uncond = st.text_encoder.encode([""])
        imgs, t0 = [], time.perf_counter()
        cache = out / "samplers" / f"{name}-{steps}-a{attempt}.npy"
        if (name, steps, attempt) == ("pndm", 75, 0):
            u8 = ref_stack
        elif cache.is_file():
            u8 = np.load(cache)
        else:
            for i in range(0, len(pids), batch):
                b = bases[i:i + batch]
                cond = st.text_encoder.encode([x["prompt"] for x in b])
                lat, _ = latents_for([x["prompt_id"] for x in b], [attempt] * len(b), shape)
                lat = denoise(st.denoiser, st.scheduler, cond, uncond, lat, steps, GUIDANCE)
                imgs.append(to_gray(st.decoder.decode(lat))[:, 0].numpy())
            u8 = np.round(np.concatenate(imgs) * 255).astype(np.uint8)
            cache.parent.mkdir(exist_ok=True)
            np.save(cache, u8)
        secs = time.perf_counter() - t0
        pred = st.qc.predict(as_float(u8))
        v = pd.DataFrame(judge(pred["p_female"], pred["race_probs"], pred["age"],
                               [x["sex"] for x in bases], [x["race"] for x in bases],
                               [x["age"] for x in bases], TOLERANCE))
        checked = v.qc_race_checked.astype(bool)
        if ref_pass is None:
            ref_pass = v.qc_pass.to_numpy(bool)
        # paired with PNDM-75 on the same seeds: verdicts that differ, exact McNemar p
        gained = int((v.qc_pass.to_numpy(bool) & ~ref_pass).sum())
        lost = int((~v.qc_pass.to_numpy(bool) & ref_pass).sum())
        rates = {"sex": wilson(int(v.qc_sex_ok.sum()), len(v)),
                 "race": wilson(int(v.qc_race_ok[checked].astype(bool).sum()), int(checked.sum())),
                 "age": wilson(int(v.qc_age_ok.sum()), len(v)),
                 "all": wilson(int(v.qc_pass.sum()), len(v))}
        mss = ms_ssim(as_float(u8), as_float(ref_stack), win_size=7, weights=wts).numpy()
        ci = bootstrap_mean_ci(mss)
        fid = fid_from_features(net.features(as_float(u8)), ref_feat)
        n_calls = n_calls_of(st.scheduler, steps)
        results.append({"sampler": name, "steps": steps, "seeds": f"attempt {attempt}",
                        "unet_calls": n_calls, "pass": rates,
                        "msssim_to_pndm75": [ci.mean, ci.low, ci.high], "fid_to_pndm75": fid,
                        "verdicts_vs_pndm75": {"gained": gained, "lost": lost,
                                               "mcnemar_p": mcnemar(gained, lost)},
                        "unet_per_accepted": n_calls / rates["all"][0] if rates["all"][0] else None,
                        "seconds": round(secs, 1)})
        print(json.dumps(results[-1]), flush=True)
    (out / "samplers.json").write_text(json.dumps(results, indent=2))
    print("| sampler | steps | seeds | UNet calls | sex pass | race pass | age pass | all pass | "
          "pass gained / lost vs PNDM-75 (McNemar p) | MS-SSIM to PNDM-75 | FID to PNDM-75 "
          "| UNet calls / accepted |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")

    def r(t):
        return f"{t[0]:.3f} [{t[1]:.3f}, {t[2]:.3f}]"

    for x in results:
        print(f"| {x['sampler']} | {x['steps']} | {x['seeds']} | {x['unet_calls']} | {r(x['pass']['sex'])} | "
              f"{r(x['pass']['race'])} | {r(x['pass']['age'])} | {r(x['pass']['all'])} | "
              f"{x['verdicts_vs_pndm75']['gained']} / {x['verdicts_vs_pndm75']['lost']} "
              f"({x['verdicts_vs_pndm75']['mcnemar_p']:.2f}) | "
              f"{r(x['msssim_to_pndm75'])} | {x['fid_to_pndm75']:.3f} | {x['unet_per_accepted']:.1f} |")
    return {"samplers": results}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("probe", "early", "verify", "samplers"))
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--prompts", type=int, default=None,
                    help="probe: held-out prompts (default 160); verify: the first N (default 48)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--weights", type=Path, default=None,
                    help="folder with generator/, qc/ and eval/ (default: the bundled demo weights)")
    ap.add_argument("--at", default="0.2", help="verify: check points")
    ap.add_argument("--margin", type=float, default=0.3, help="verify: margin")
    a = ap.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(a.threads)
    global WEIGHTS_DIR
    WEIGHTS_DIR = a.weights
    a.out.mkdir(parents=True, exist_ok=True)
    if a.what == "probe":
        probe(a.out, a.prompts or 160, a.batch)
    elif a.what == "early":
        early(a.out)
    elif a.what == "verify":
        verify(a.out, a.prompts or 48, [float(x) for x in a.at.split(",")], a.margin, a.batch)
    else:
        samplers(a.out, a.batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
