"""`generate_dataset`: prompts in, a QC'd synthetic dataset store out.

Work items are (prompt, attempt) pairs. An executor (`rv2.generate.executor`)
runs them through the stages (`rv2.generate.stages`: encode text -> denoise ->
decode -> QC -> write); a failed attempt comes back with attempt + 1 until
`max_attempts`, by the one retry rule.
"""
from __future__ import annotations

import collections
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Callable

from rv2 import __version__
from rv2.config import hash_input, write_artifact_meta
from rv2.data.schema import CHEXPERT_LABELS, age_bin
from rv2.errors import UserError
from rv2.files import (
    DiskFullError,
    atomic_write_text,
    check_writable,
    dumps,
    is_disk_full,
    plain,
)
from rv2.generate.config import GenerateConfig
from rv2.generate.early_reject import attempt_accounting
from rv2.generate.executor import Executor, InProcessExecutor
from rv2.generate.qc_calibration import read_calibration, resolve_age_tolerance
from rv2.generate.quota import QuotaLoop, load_quota
from rv2.generate.recipe import StageInfo, StageRecipe, build_stages
from rv2.generate.stages import SamplingPlan, StageRunner, StageSet
from rv2.generate.store import ShardedStore, StoreError
from rv2.models.sd import check_model_dir
from rv2.prompts.checks import check_generation_prompts
from rv2.signals import StopRequests, interrupted

log = logging.getLogger("rv2.generate")

PROMPT_COLUMNS = ("prompt_id", "prompt", "sex", "race", "age", "patient_id", "split")
# Carried from the prompts table into every record (when present).
CARRY_COLUMNS = ("prompt_id", "prompt", "sex", "race", "age", "age_bin", "source_prompt_id",
                 "variant", "image_id", "patient_id", "split", "dataset", "study_id")


class PromptsError(UserError):
    """The prompts table cannot be generated from; the message says why and what to do."""



def load_prompts(src, allow_long: bool = False) -> "Any":
    """Read and check an expanded prompts table (Parquet path or DataFrame): sex, race
    and age in the schema (ages in its range), prompt text that agrees with them and
    fits 77 CLIP tokens (`rv2.prompts.checks`; `allow_long` only warns)."""
    import pandas as pd

    name = "<DataFrame>"
    if isinstance(src, (str, os.PathLike)):
        name = str(src)
        if not Path(src).is_file():
            raise PromptsError(f"prompts table not found: {src} (make it with the prompts stage)")
        try:
            df = pd.read_parquet(src)
        except Exception as exc:  # noqa: BLE001
            raise PromptsError(f"{src}: not a readable Parquet file ({exc})") from exc
    elif isinstance(src, pd.DataFrame):
        df = src.copy()
    else:
        raise PromptsError(f"prompts must be a Parquet path or a DataFrame, got {type(src).__name__}")
    missing = [c for c in PROMPT_COLUMNS + tuple(CHEXPERT_LABELS) if c not in df.columns]
    if missing:
        raise PromptsError(f"{name}: missing column(s) {missing}; expected the expanded prompts "
                           "table (prompt_id, prompt, sex, race, age, patient_id, split and the 14 "
                           "CheXpert labels)")
    if df.empty:
        raise PromptsError(f"{name}: no prompts")
    df["prompt_id"] = df["prompt_id"].astype(str)
    dup = df["prompt_id"][df["prompt_id"].duplicated()]
    if len(dup):
        raise PromptsError(f"{name}: prompt_id must be unique; duplicated: {list(dup[:5])}")
    empty = df["prompt"].isna() | (df["prompt"].astype(str).str.strip() == "")
    if empty.any():
        raise PromptsError(f"{name}: empty prompt text in rows {list(df['prompt_id'][empty][:5])}")
    try:
        df = check_generation_prompts(df, name, allow_long=allow_long)
    except UserError as exc:
        raise PromptsError(str(exc)) from None
    df["age_bin"] = [age_bin(a) for a in df["age"]]  # follows the checked age
    return df.reset_index(drop=True)


def base_record(row: dict, rv2_version: str, model_id: str, model_hash: str, qc_id: str) -> dict:
    """The manifest fields of one prompt: requested demographics as the demographics,
    labels from the source row, synthetic provenance."""
    pid = str(row["prompt_id"])
    rec = {
        "image_id": f"syn-{pid}",
        "patient_id": str(row["patient_id"]),
        # images drawn from one source impression form one synthetic "study"
        "study_id": f"syn-{row.get('source_prompt_id') or pid}",
        "dataset": "synthetic",
        "view": "PA",
        "sex": str(row["sex"]),
        "age": plain(row["age"]),
        "age_bin": plain(row["age_bin"]),
        "race": str(row["race"]),
        "split": plain(row["split"]),
        **{lab: plain(row[lab]) for lab in CHEXPERT_LABELS},
        "prompt_id": pid,
        "prompt": str(row["prompt"]),
        "source_prompt_id": plain(row.get("source_prompt_id")),
        "source_image_id": plain(row.get("image_id")),
        "source_dataset": plain(row.get("dataset")),
        "source_study_id": plain(row.get("study_id")),
        "source_path": plain(row.get("path")),
        "impression": plain(row.get("impression")),
        "variant": plain(row.get("variant")),
        "model_id": model_id,
        "model_hash": model_hash,
        "qc_model": qc_id,
        "rv2_version": rv2_version,
    }
    return rec


def summarize(store, max_attempts: int, wall_s: float, n_attempts_run: int,
              n_accepted_run: int, timings: dict | None = None) -> dict:
    """Whole-store summary (earlier runs included) plus this run's speed."""
    recs = store.records
    by_prompt: dict[str, list[dict]] = collections.defaultdict(list)
    for r in recs:
        by_prompt[r["prompt_id"]].append(r)
    hist: collections.Counter = collections.Counter()
    failed, failed_by = 0, collections.Counter()
    for pid, rs in by_prompt.items():
        rs = sorted(rs, key=lambda r: r["attempt"])
        if pid in store.accepted:
            hist[str(store.accepted[pid]["attempt"] + 1)] += 1
        elif len(rs) >= max_attempts or rs[-1]["attempt"] + 1 >= max_attempts:
            failed += 1
            hist["failed"] += 1
            for a in {x for r in rs for x in (r.get("qc_fail_reasons") or "").split(";") if x}:
                failed_by[a] += 1
    att_fail = collections.Counter(x for r in recs for x in (r.get("qc_fail_reasons") or "").split(";") if x)
    checked_race = sum(1 for r in recs if r.get("qc_race_checked"))
    n = len(recs)
    return {
        "prompts_seen": len(by_prompt),
        "accepted": len(store.accepted),
        "failed": failed,
        "failed_by_attribute": dict(failed_by),
        "attempts_histogram": dict(sorted(hist.items())),
        "attempts_total": n,
        "attempts": attempt_accounting(recs),
        "attempt_pass_rate": {
            "overall": (sum(1 for r in recs if r.get("qc_pass")) / n) if n else None,
            "sex": (1 - att_fail["sex"] / n) if n else None,
            "race": (1 - att_fail["race"] / checked_race) if checked_race else None,
            "age": (1 - att_fail["age"] / n) if n else None,
        },
        "race_unchecked_attempts": n - checked_race,
        "this_run": {
            "wall_s": round(wall_s, 3),
            "attempts": n_attempts_run,
            "accepted": n_accepted_run,
            "images_per_s": round(n_attempts_run / wall_s, 4) if wall_s > 0 else None,
            "accepted_per_s": round(n_accepted_run / wall_s, 4) if wall_s > 0 else None,
            "stage_seconds": {k: round(v, 3) for k, v in (timings or {}).items()},
        },
    }


def generate_dataset(prompts, model_dir, out_dir, cfg: GenerateConfig | None = None,
                     qc_models: Any = "auto", components: Any = None, *,
                     stages: StageSet | None = None, executor: Executor | None = None,
                     progress: bool = True) -> dict:
    """Generate (or resume) a QC'd synthetic dataset store; returns the summary dict.

    prompts: expanded prompts table (Parquet path or DataFrame).
    model_dir: diffusers folder of the generator (loaded unless `components` or
      `stages` is given; hashed into the store's identity).
    components: loaded `rv2.models.sd.SDComponents`, run by the eager stages.
    stages: a ready `StageSet` (e.g. compiled engines from `rv2.engines.load`).
    qc_models: a QC predictor (`rv2.models.qc_networks.QCModels`); "auto" loads them
      from `cfg.qc.weights_dir` (or takes `stages.qc`); None disables QC.
    executor: who schedules the work items (default: `InProcessExecutor(cfg.batch_size)`).
    With `cfg.quota.targets`, prompts are drawn in rounds until per-cell targets or the
    attempt budget (`rv2.generate.quota`); the summary gets a "quota" report.
    """
    from tqdm.auto import tqdm

    cfg = (cfg or GenerateConfig()).validate()
    df = load_prompts(prompts, allow_long=cfg.allow_long_prompts)
    if cfg.qc.calibration:
        read_calibration(cfg.qc.calibration)  # fail fast, before loading models
    if cfg.limit is not None:
        df = df.iloc[: cfg.limit]
    quota = load_quota(cfg.quota, df[["sex", "race", "age_bin"]].to_dict("records"))  # fail fast
    check_writable(out_dir, "--out")  # before loading any model
    model_dir = Path(model_dir) if model_dir is not None else None
    executor = executor or InProcessExecutor(cfg.batch_size)
    # An executor whose workers load their own stages gets a recipe, not loaded stages.
    remote = callable(getattr(executor, "start", None))
    if remote and (stages is not None or components is not None or not isinstance(qc_models, str)):
        raise UserError(f"the {executor.name} executor loads the models in its workers from "
                        "model_dir and the settings; pass neither stages, components nor QC models")
    if stages is None and components is None:
        if model_dir is None:
            raise UserError("give model_dir (a diffusers folder), components or stages")
        check_model_dir(model_dir)  # fail fast, before loading anything
    out_dir = Path(out_dir)
    if remote:
        stages = None
        info = executor.start(StageRecipe.of(model_dir, cfg), out_dir)
    else:
        stages = build_stages(cfg, model_dir, qc_models, components, stages)
        info = StageInfo.of(stages, cfg)
    if model_dir is not None and model_dir.exists():
        model_id, model_hash = model_dir.name, hash_input(model_dir)["sha256"][:16]
    else:
        model_id, model_hash = "in-memory", "unhashed"
    qc_on = info.qc_model_hash is not None
    qc_id = f"{info.qc_model_id}@{info.qc_model_hash}" if qc_on else "none"
    try:  # the calibration must describe the QC models the stages loaded
        tolerance = resolve_age_tolerance(cfg.qc, info.qc_model_id, info.qc_model_hash,
                                          info.qc_convention)
    except BaseException:
        if remote:
            executor.close()
        raise
    shape = info.latent_shape
    run_info = {"model_id": model_id, "model_hash": model_hash,
                "qc_hash": info.qc_model_hash,
                "sampler": cfg.sampler.name,
                "steps": cfg.sampler.steps, "guidance": cfg.sampler.guidance,
                "height": cfg.sampler.height, "width": cfg.sampler.width,
                "latent_shape": list(shape), "base_seed": cfg.sampler.base_seed,
                "dtype": info.dtype, "qc_enabled": qc_on,
                "qc_convention": info.qc_convention,
                "age_tolerance": tolerance["years"],
                "age_tolerance_source": {k: tolerance.get(k) for k in ("source", "rule", "calibration")},
                "image_format": cfg.store.image_format,
                "channels": cfg.store.channels, "rv2_version": __version__}
    out_dir = Path(out_dir)
    resume = f"the store {out_dir} is consistent; rerun the same command to resume"
    try:
        store = ShardedStore(out_dir, cfg.store, run_info,
                             writers="multi" if remote else "single").open()
    except BaseException as exc:
        if remote:
            executor.close()
        if isinstance(exc, DiskFullError):
            raise disk_full(exc, out_dir) from None
        raise
    try:
        rows = df.to_dict("records")
        bases = {str(r["prompt_id"]): base_record(r, __version__, model_id, model_hash, qc_id)
                 for r in rows}
        changed = [pid for pid, r in store.accepted.items()
                   if pid in bases and r.get("prompt") != bases[pid]["prompt"]]
        if changed:
            raise StoreError(f"store {out_dir} holds images for {len(changed)} prompt id(s) whose "
                             f"text differs in this prompts table (e.g. {changed[:3]}); prompt ids "
                             "must keep their text. Use another --out.")
        loop = None
        if quota is not None:  # rounds by the quota's rules (rv2.generate.quota)
            loop = QuotaLoop(quota, cfg.quota, rows, store, bases, lambda r: base_record(
                r, __version__, model_id, model_hash, qc_id), cfg.max_attempts,
                cfg.allow_long_prompts)
        work = [(pid, store.next_attempt(pid)) for pid in bases
                if loop is None and not store.is_done(pid, cfg.max_attempts)]
        plan = SamplingPlan(steps=cfg.sampler.steps, guidance=cfg.sampler.guidance,
                            base_seed=cfg.sampler.base_seed, latent_shape=shape,
                            age_tolerance=tolerance["years"], channels=cfg.store.channels,
                            early=cfg.early_reject if cfg.early_reject.at else None)
        runner = StageRunner(stages, store, plan, bases)
        bar = tqdm(total=len(work) if loop is None else quota.total, desc="prompts" if loop is None
                   else "quota", unit="prompt" if loop is None else "img", disable=not progress,
                   dynamic_ncols=True)
        progress_cb = _Progress(bar if loop is None else tqdm(disable=True), store,
                                cfg.store.manifest_every, executor)
        with StopRequests() as stop:
            try:
                if loop is None:
                    executor.run(runner, work, cfg.max_attempts, stop_after_batch(progress_cb, stop))
                else:
                    loop.run(executor, runner, stop_after_batch(progress_cb, stop), bar)
            except StopAfterBatch:
                pass
            except KeyboardInterrupt as exc:  # a second signal: the batch in flight is dropped
                bar.close()
                raise interrupted(exc, resume) from None
        bar.close()
        if stop.requested:
            store.write_tables()
            stop.raise_if_requested(f"{progress_cb.attempts} attempt(s) of this run are kept; "
                                    + resume)
        wall = time.perf_counter() - progress_cb.t_start
        manifest, qc_log = store.write_tables()
        summary = summarize(store, cfg.max_attempts, wall, progress_cb.attempts,
                            progress_cb.accepted, dict(runner.timings))
        if loop is not None:
            summary["quota"] = loop.report()
        if getattr(executor, "last_stats", None):
            summary["this_run"]["scheduler"] = _scheduler_summary(executor.last_stats)
        summary.update({"store": str(out_dir), "manifest": str(manifest), "qc_log": str(qc_log),
                        "model_id": model_id, "model_hash": model_hash, "qc_model": qc_id,
                        "device": info.device, "dtype": info.dtype, "prompts_total": len(df),
                        "executor": getattr(executor, "name", type(executor).__name__),
                        "age_tolerance": tolerance})
        if callable(getattr(executor, "report", None)):
            summary["workers"] = executor.report()
        atomic_write_text(out_dir / "summary.json", dumps(summary, indent=2))
        inputs = [prompts] if isinstance(prompts, (str, os.PathLike)) else []
        if cfg.qc.calibration:
            inputs.append(cfg.qc.calibration)
        if quota is not None and Path(quota.source).is_file():
            inputs.append(quota.source)
        write_artifact_meta(out_dir, cfg, inputs=inputs, extra={"run": run_info, "summary": summary})
        write_artifact_meta(manifest, cfg, inputs=inputs, extra={"run": run_info})
        return summary
    except (DiskFullError, OSError) as exc:
        if isinstance(exc, DiskFullError) or is_disk_full(exc):
            raise disk_full(exc, out_dir) from None
        raise
    finally:
        if remote:
            executor.close()
        store.close()


class StopAfterBatch(Exception):
    """Raised from the result callback once a stop signal came: the batch that produced
    the result is already in the store (executors call back after writing)."""


def stop_after_batch(on_result: Callable, stop: StopRequests) -> Callable:
    def call(rec: dict, final: bool) -> None:
        on_result(rec, final)
        if stop.requested:
            raise StopAfterBatch
    return call


def disk_full(exc: Exception, out_dir) -> DiskFullError:
    named = re.match(r"writing (.+?): ", str(exc))
    path = (getattr(exc, "path", None) or getattr(exc, "filename", None)
            or (named.group(1) if named else None) or out_dir)
    return DiskFullError(f"disk full while writing {path}; the store {out_dir} is consistent; "
                         "free space and rerun the same command to resume", path)


def _scheduler_summary(st: dict) -> dict:
    """A pipeline executor's statistics for summary.json: stage busy seconds and their
    share of the wall time, queue depths, denoiser slot occupancy and waiting share."""
    wall = st.get("wall_s") or 0.0
    busy = st.get("busy_s", {})
    return {"scheduler": st.get("scheduler"), "slots": st.get("capacity"),
            "slot_occupancy": round(st.get("occupancy", 0.0), 4), "denoiser_steps": st.get("steps"),
            "denoiser_wait_share": round(st.get("denoiser_wait_s", 0.0) / wall, 4) if wall else None,
            "stage_busy_s": {k: round(v, 3) for k, v in busy.items()},
            "stage_busy_share": {k: round(v / wall, 4) for k, v in busy.items()} if wall else {},
            "queue_capacity": st.get("queue_capacity"),
            "queue_depth_max": st.get("queue_depth_max"),
            "queue_depth_mean": {k: round(v, 2) for k, v in st.get("queue_depth_mean", {}).items()},
            "retries": st.get("retries"),
            # speculation: attempts started before their predecessor's verdict, kept or
            # dropped, and the slot occupancy of the work that was kept
            "speculated": st.get("speculated", 0), "speculation_kept": st.get("speculation_kept", 0),
            "speculation_dropped": st.get("speculation_dropped", 0),
            "useful_slot_occupancy": round(st.get("useful_occupancy", st.get("occupancy", 0.0)), 4)}


class _Progress:
    """Counts finished attempts, drives the progress bar (running pass rates and
    speed, and a pipeline executor's slot occupancy and queue depths) and rewrites
    the store's tables every `manifest_every` settled prompts."""

    def __init__(self, bar, store, manifest_every: int, executor=None):
        self.bar, self.store, self.manifest_every = bar, store, manifest_every
        self.executor = executor
        self.attempts = self.accepted = self.race_checked = self.since_tables = 0
        self.fail: collections.Counter = collections.Counter()
        self.t_start = time.perf_counter()

    def _pipeline_postfix(self) -> dict:
        live = getattr(self.executor, "live_stats", None)
        if not live:
            return {}
        out = {"occ": f"{live.get('occupancy', 0.0):.0%}",
               "q": "/".join(str(live.get(k, 0)) for k in ("ready", "decode", "qc", "write"))}
        if live.get("speculated"):   # speculative attempts started/dropped so far
            out["spec"] = f"{live['speculated']}/{live.get('speculation_dropped', 0)}"
        return out

    def __call__(self, rec: dict, final: bool) -> None:
        self.attempts += 1
        self.race_checked += bool(rec.get("qc_race_checked"))
        for a in (rec.get("qc_fail_reasons") or "").split(";"):
            if a:
                self.fail[a] += 1
        self.accepted += bool(rec["qc_pass"])
        if final:
            self.bar.update(1)
            self.since_tables += 1
        n, el = self.attempts, time.perf_counter() - self.t_start
        self.bar.set_postfix({
            "acc": self.accepted,
            "sex": f"{1 - self.fail['sex'] / n:.2f}",
            "race": f"{1 - self.fail['race'] / self.race_checked:.2f}" if self.race_checked else "-",
            "age": f"{1 - self.fail['age'] / n:.2f}",
            "img/s": f"{n / el:.2f}" if el > 0 else "-",
            **self._pipeline_postfix(),
        }, refresh=False)
        if self.since_tables >= self.manifest_every:
            self.since_tables = 0
            self.store.write_tables()
