"""`generate_dataset`: prompts in, a QC'd synthetic dataset store out.

Work items are (prompt, attempt) pairs. The in-process executor groups them in
batches and runs the stages encode_text -> denoise -> decode -> run_qc ->
write; a failed attempt goes back to the queue with attempt + 1 until
`max_attempts`. Retries are batched first, so a prompt's fate is settled soon.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from rv2.errors import UserError
from rv2.generate.config import GenerateConfig

log = logging.getLogger("rv2.generate")

PROMPT_COLUMNS = ("prompt_id", "prompt", "sex", "race", "age", "patient_id", "split")
# Carried from the prompts table into every record (when present).
CARRY_COLUMNS = ("prompt_id", "prompt", "sex", "race", "age", "age_bin", "source_prompt_id",
                 "variant", "image_id", "patient_id", "split", "dataset", "study_id")


class PromptsError(UserError):
    """The prompts table cannot be generated from; the message says why and what to do."""


def load_prompts(src) -> "Any":
    """Read and check an expanded prompts table (Parquet path or DataFrame)."""
    import pandas as pd

    from rv2.data.schema import CHEXPERT_LABELS, SEXES, STUDY_RACES, age_bin

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
    bad_sex = sorted(set(df["sex"].dropna().astype(str)) - set(SEXES)) + (["<missing>"] if df["sex"].isna().any() else [])
    if bad_sex:
        raise PromptsError(f"{name}: sex must be one of {SEXES}; found {bad_sex}")
    bad_race = sorted(set(df["race"].dropna().astype(str)) - set(STUDY_RACES)) + (["<missing>"] if df["race"].isna().any() else [])
    if bad_race:
        raise PromptsError(f"{name}: race must be one of {STUDY_RACES}; found {bad_race}")
    age = pd.to_numeric(df["age"], errors="coerce")
    if age.isna().any():
        raise PromptsError(f"{name}: age must be a number for every prompt; bad rows: "
                           f"{list(df['prompt_id'][age.isna()][:5])}")
    df["age"] = age
    if "age_bin" not in df.columns:
        df["age_bin"] = [age_bin(a) for a in df["age"]]
    empty = df["prompt"].isna() | (df["prompt"].astype(str).str.strip() == "")
    if empty.any():
        raise PromptsError(f"{name}: empty prompt text in rows {list(df['prompt_id'][empty][:5])}")
    return df.reset_index(drop=True)


def _py(v):
    """A JSON-friendly scalar (NaN labels stay NaN; pandas NA -> None)."""
    if v is None:
        return None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return float(v)
    if isinstance(v, (np.bool_,)):
        return bool(v)
    try:
        import pandas as pd

        if v is pd.NA or v is pd.NaT:
            return None
    except ImportError:  # pragma: no cover
        pass
    return v


def base_record(row: dict, rv2_version: str, model_id: str, model_hash: str, qc_id: str) -> dict:
    """The manifest fields of one prompt: requested demographics as the demographics,
    labels from the source row, synthetic provenance."""
    from rv2.data.schema import CHEXPERT_LABELS

    pid = str(row["prompt_id"])
    rec = {
        "image_id": f"syn-{pid}",
        "patient_id": str(row["patient_id"]),
        # images drawn from one source impression form one synthetic "study"
        "study_id": f"syn-{row.get('source_prompt_id') or pid}",
        "dataset": "synthetic",
        "view": "PA",
        "sex": str(row["sex"]),
        "age": _py(row["age"]),
        "age_bin": _py(row["age_bin"]),
        "race": str(row["race"]),
        "split": _py(row["split"]),
        **{lab: _py(row[lab]) for lab in CHEXPERT_LABELS},
        "prompt_id": pid,
        "prompt": str(row["prompt"]),
        "source_prompt_id": _py(row.get("source_prompt_id")),
        "source_image_id": _py(row.get("image_id")),
        "source_dataset": _py(row.get("dataset")),
        "source_study_id": _py(row.get("study_id")),
        "source_path": _py(row.get("path")),
        "impression": _py(row.get("impression")),
        "variant": _py(row.get("variant")),
        "model_id": model_id,
        "model_hash": model_hash,
        "qc_model": qc_id,
        "rv2_version": rv2_version,
    }
    return rec


@dataclass
class Stages:
    """The five stages bound to their models; `process` runs one batch through all."""

    components: Any
    qc_models: Any
    store: Any
    cfg: GenerateConfig
    device: Any
    dtype: Any
    base_records: dict            # prompt_id -> base record
    latent_shape: tuple
    on_step: Callable | None = None
    _uncond: Any = None
    timings: dict = field(default_factory=lambda: collections.defaultdict(float))

    def uncond(self):
        from rv2.generate.sampler import encode_text

        if self._uncond is None:
            self._uncond = encode_text(self.components, [""], self.device)
        return self._uncond

    def process(self, items: Sequence[tuple[str, int]]) -> list[dict]:
        import torch

        from rv2._native import to_uint8
        from rv2.generate.qc import run_qc
        from rv2.generate.sampler import (
            decode,
            denoise,
            encode_text,
            latents_for,
            to_gray,
        )
        from rv2.generate.store import write

        s = self.cfg.sampler
        pids = [p for p, _ in items]
        attempts = [a for _, a in items]
        bases = [self.base_records[p] for p in pids]
        t0 = time.perf_counter()
        cond = encode_text(self.components, [b["prompt"] for b in bases], self.device)
        uncond = self.uncond() if s.guidance > 1.0 else None
        lat, seeds = latents_for(pids, attempts, self.latent_shape, s.base_seed, self.device,
                                 self.dtype)
        t1 = time.perf_counter()
        lat = denoise(self.components, cond, uncond, lat, s.steps, s.guidance, self.on_step)
        t2 = time.perf_counter()
        images = decode(self.components, lat)
        if self.cfg.store.channels == "gray":
            images = to_gray(images)
        t3 = time.perf_counter()
        verdicts = run_qc(self.qc_models, images, [b["sex"] for b in bases],
                          [b["race"] for b in bases], [b["age"] for b in bases],
                          self.cfg.qc.age_tolerance)
        # NaN/inf pixels (e.g. fp16 overflow in the VAE) never pass, whatever the QC says
        finite = torch.isfinite(images).flatten(1).all(dim=1).tolist()
        for v, ok in zip(verdicts, finite):
            if not ok:
                v["qc_pass"] = False
                v["qc_fail_reasons"] = ";".join(x for x in (v["qc_fail_reasons"], "nonfinite") if x)
        t4 = time.perf_counter()
        arr = images.detach().to("cpu", torch.float32).numpy()
        records, u8 = [], []
        for i, (b, v) in enumerate(zip(bases, verdicts)):
            records.append({**b, "seed": seeds[i], "attempt": attempts[i], **v})
            if v["qc_pass"]:
                img = arr[i]
                img = img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))
                u8.append(to_uint8(np.ascontiguousarray(img)))
            else:
                u8.append(None)
        out = write(self.store, records, u8)
        t5 = time.perf_counter()
        for k, dt in (("encode_text", t1 - t0), ("denoise", t2 - t1), ("decode", t3 - t2),
                      ("qc", t4 - t3), ("write", t5 - t4)):
            self.timings[k] += dt
        return out


class InProcessExecutor:
    """Runs (prompt_id, attempt) work items through `stages.process` in batches,
    re-queueing failed attempts until max_attempts."""

    def __init__(self, stages, batch_size: int, max_attempts: int,
                 on_result: Callable[[dict, bool], None] | None = None):
        self.stages = stages
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.on_result = on_result

    def run(self, work: Sequence[tuple[str, int]]) -> None:
        fresh = collections.deque(work)
        retry: collections.deque = collections.deque()
        while fresh or retry:
            batch = []
            while len(batch) < self.batch_size and (retry or fresh):
                batch.append(retry.popleft() if retry else fresh.popleft())
            for rec in self.stages.process(batch):
                final = bool(rec["qc_pass"]) or rec["attempt"] + 1 >= self.max_attempts
                if not final:
                    retry.append((rec["prompt_id"], rec["attempt"] + 1))
                if self.on_result is not None:
                    self.on_result(rec, final)


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
                     qc_models: Any = "auto", components: Any = None,
                     progress: bool = True) -> dict:
    """Generate (or resume) a QC'd synthetic dataset store; returns the summary dict.

    prompts: expanded prompts table (Parquet path or DataFrame).
    model_dir: diffusers folder of the generator (used for loading unless
      `components` is given, and for the model hash).
    qc_models: a `rv2.models.qc.QCModels`; "auto" loads them from
      `cfg.qc.weights_dir` (a QC bundle or the real files); None disables QC.
    """
    from tqdm.auto import tqdm

    from rv2 import __version__
    from rv2.config import hash_input, write_artifact_meta
    from rv2.files import atomic_write_text
    from rv2.generate.sampler import latent_shape, resolve_device, resolve_dtype
    from rv2.generate.store import ShardedStore

    cfg = (cfg or GenerateConfig()).validate()
    df = load_prompts(prompts)
    if cfg.limit is not None:
        df = df.iloc[: cfg.limit]
    device = resolve_device(cfg.sampler.device)
    dtype = resolve_dtype(cfg.sampler.dtype, device)

    model_dir = Path(model_dir) if model_dir is not None else None
    if components is None and model_dir is not None:
        from rv2.models.sd import check_model_dir

        check_model_dir(model_dir)  # fail fast, before loading anything
    if isinstance(qc_models, str) and qc_models == "auto":
        if cfg.qc.enabled:
            from rv2.models.qc import load_qc_models

            qc_models = load_qc_models(cfg.qc.weights_dir, device, cfg.qc.convention,
                                       cfg.qc.batch_size)
        else:
            qc_models = None
    elif not cfg.qc.enabled:
        qc_models = None
    if qc_models is not None:
        qc_models.to(device)
    if components is None:
        from rv2.models.sd import load_components

        if model_dir is None:
            raise UserError("give model_dir (a diffusers folder) or components")
        components = load_components(model_dir, torch_dtype=dtype)
    for name in ("unet", "vae", "text_encoder"):
        m = getattr(components, name)
        p = next(m.parameters())
        if p.device != device or p.dtype != dtype:  # .to(dtype) makes diffusers warn; skip no-ops
            m.to(device=device, dtype=dtype)
        m.eval()
    if model_dir is not None and model_dir.exists():
        model_id, model_hash = model_dir.name, hash_input(model_dir)["sha256"][:16]
    else:
        model_id, model_hash = "in-memory", "unhashed"

    qc_id = f"{qc_models.model_id}@{qc_models.model_hash}" if qc_models is not None else "none"

    shape = latent_shape(components, cfg.sampler.height, cfg.sampler.width)
    run_info = {"model_id": model_id, "model_hash": model_hash,
                "qc_hash": qc_models.model_hash if qc_models is not None else None,
                "steps": cfg.sampler.steps, "guidance": cfg.sampler.guidance,
                "height": cfg.sampler.height, "width": cfg.sampler.width,
                "latent_shape": list(shape), "base_seed": cfg.sampler.base_seed,
                "dtype": str(dtype), "qc_enabled": qc_models is not None,
                "qc_convention": qc_models.convention if qc_models is not None else None,
                "age_tolerance": cfg.qc.age_tolerance, "image_format": cfg.store.image_format,
                "channels": cfg.store.channels, "rv2_version": __version__}
    out_dir = Path(out_dir)
    store = ShardedStore(out_dir, cfg.store, run_info).open()
    try:
        rows = df.to_dict("records")
        bases = {str(r["prompt_id"]): base_record(r, __version__, model_id, model_hash, qc_id)
                 for r in rows}
        changed = [pid for pid, r in store.accepted.items()
                   if pid in bases and r.get("prompt") != bases[pid]["prompt"]]
        if changed:
            from rv2.generate.store import StoreError

            raise StoreError(f"store {out_dir} holds images for {len(changed)} prompt id(s) whose "
                             f"text differs in this prompts table (e.g. {changed[:3]}); prompt ids "
                             "must keep their text. Use another --out.")
        work = [(pid, store.next_attempt(pid)) for pid in bases
                if not store.is_done(pid, cfg.max_attempts)]
        stages = Stages(components, qc_models, store, cfg, device, dtype, bases, shape)
        counts = {"attempts": 0, "accepted": 0, "done": 0, "fail": collections.Counter(),
                  "race_checked": 0}
        t_start = time.perf_counter()
        bar = tqdm(total=len(work), desc="prompts", unit="prompt", disable=not progress,
                   dynamic_ncols=True)
        since_manifest = [0]

        def on_result(rec: dict, final: bool) -> None:
            counts["attempts"] += 1
            counts["race_checked"] += bool(rec.get("qc_race_checked"))
            for a in (rec.get("qc_fail_reasons") or "").split(";"):
                if a:
                    counts["fail"][a] += 1
            if rec["qc_pass"]:
                counts["accepted"] += 1
            if final:
                bar.update(1)
                since_manifest[0] += 1
            n = counts["attempts"]
            el = time.perf_counter() - t_start
            bar.set_postfix({
                "acc": counts["accepted"],
                "sex": f"{1 - counts['fail']['sex'] / n:.2f}",
                "race": (f"{1 - counts['fail']['race'] / counts['race_checked']:.2f}"
                         if counts["race_checked"] else "-"),
                "age": f"{1 - counts['fail']['age'] / n:.2f}",
                "img/s": f"{n / el:.2f}" if el > 0 else "-",
            }, refresh=False)
            if since_manifest[0] >= cfg.store.manifest_every:
                since_manifest[0] = 0
                store.write_tables()

        InProcessExecutor(stages, cfg.batch_size, cfg.max_attempts, on_result).run(work)
        bar.close()
        wall = time.perf_counter() - t_start
        manifest, qc_log = store.write_tables()
        summary = summarize(store, cfg.max_attempts, wall, counts["attempts"], counts["accepted"],
                            dict(stages.timings))
        summary.update({"store": str(out_dir), "manifest": str(manifest), "qc_log": str(qc_log),
                        "model_id": model_id, "model_hash": model_hash, "qc_model": qc_id,
                        "device": str(device), "dtype": str(dtype), "prompts_total": len(df)})
        atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
        inputs = [prompts] if isinstance(prompts, (str, os.PathLike)) else []
        write_artifact_meta(out_dir, cfg, inputs=inputs, extra={"run": run_info, "summary": summary})
        write_artifact_meta(manifest, cfg, inputs=inputs, extra={"run": run_info})
        return summary
    finally:
        store.close()
