"""`rv2 predict --executor ray`: a manifest split across Predictor actors.

The manifest is cut into chunks of whole batches (`chunk_batches` x `batch_size`
rows), so every batch the network sees is the batch the single-process run sees
and the predictions are the same. Each actor loads the classifier once
(`rv2.classify.predictor.Predictor`) and runs `rv2.classify.inference.predict` on
its chunks; a lost actor's chunks are handed out again. The driver puts the
chunks back in manifest order and reports the unreadable images as the
single-process run does.
"""
from __future__ import annotations

import collections
import os
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd

from rv2 import __version__
from rv2.classify import model_dir as md
from rv2.classify.data import manifest_root
from rv2.classify.inference import SKIPPED_COLUMNS
from rv2.classify.inference import predict as predict_local
from rv2.classify.predictor import Predictor
from rv2.data.manifest import read_manifest
from rv2.distributed.cluster import connect, require_ray
from rv2.distributed.pool import ActorPool
from rv2.errors import UserError


class PredictWorker:
    def __init__(self, name: str, model_dir: str, device: str, threads: int, batch_size: int,
                 decoder: str):
        self.name, self.model_dir, self.device = name, model_dir, device
        self.threads, self.batch_size, self.decoder = threads, batch_size, decoder

    def load(self) -> dict:
        import torch

        torch.set_num_threads(max(1, int(self.threads)))
        self.predictor = Predictor.load(self.model_dir, self.device)
        return {"name": self.name, "node": socket.gethostname(), "pid": os.getpid(),
                "device": str(self.predictor.backend.device), "rv2_version": __version__}

    def predict(self, chunk: pd.DataFrame, root: str) -> dict:
        t0 = time.perf_counter()
        out = predict_local(self.model_dir, chunk, root, batch_size=self.batch_size,
                            progress=False, decoder=self.decoder, predictor=self.predictor)
        skipped = out.attrs["skipped"]
        out.attrs = {}
        return {"preds": out, "skipped": skipped, "busy_s": time.perf_counter() - t0}


class RayPredictExecutor:
    """Predictor actors on a Ray cluster (see the module doc); options as `RayExecutor`."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None,
                 gpus_per_worker: float | None = None, cpus_per_worker: float = 1,
                 batch_size: int | None = None, chunk_batches: int = 16,
                 max_restarts: int | None = None, load_timeout_s: float = 600.0,
                 include_dashboard: bool | None = None):
        require_ray()
        if chunk_batches < 1:
            raise UserError(f"chunk_batches must be at least 1, got {chunk_batches}")
        self.address, self.n_workers = address, workers
        self.gpus_per_worker, self.cpus_per_worker = gpus_per_worker, cpus_per_worker
        self.chunk_batches, self.max_restarts = chunk_batches, max_restarts
        self.load_timeout_s, self.include_dashboard = load_timeout_s, include_dashboard
        self.cluster: dict = {}
        self.pool: ActorPool | None = None

    def connect(self) -> dict:
        if not self.cluster:
            self.cluster = connect(self.address, include_dashboard=self.include_dashboard)
        return self.cluster

    def predict(self, model_dir, manifest, root=None, *, batch_size: int = 64,
                decoder: str = "pil", progress: bool = True) -> pd.DataFrame:
        """As `rv2.classify.inference.predict` (same columns, order and attrs)."""
        from tqdm.auto import tqdm

        ray = require_ray()
        c = self.connect()
        if isinstance(manifest, pd.DataFrame):
            if root is None:
                raise UserError("root is required when the manifest is a DataFrame")
            df, name = manifest.reset_index(drop=True), "manifest"
        else:
            df, name = read_manifest(manifest), str(manifest)
            root = manifest_root(manifest, root)
        ids = df["image_id"].astype("string")
        if ids.duplicated().any():
            raise UserError(f"{name}: image_id is not unique (e.g. {ids[ids.duplicated()].unique()[:5].tolist()}); "
                            "predictions are keyed by it")
        gpus = self.gpus_per_worker if self.gpus_per_worker is not None else (1.0 if c["gpus"] >= 1 else 0.0)
        if gpus > c["gpus"]:
            raise UserError(f"--gpus-per-worker {gpus:g} but the Ray cluster has {c['gpus']:g} GPU(s)")
        slots = int(c["gpus"] // gpus) if gpus > 0 else int(c["cpus"] // self.cpus_per_worker)
        rows = batch_size * self.chunk_batches
        chunks = [df.iloc[i:i + rows] for i in range(0, len(df), rows)]
        n = min(self.n_workers or max(1, slots), max(1, len(chunks)))
        actor_cls = ray.remote(PredictWorker).options(num_cpus=self.cpus_per_worker, num_gpus=gpus,
                                                       max_restarts=0)
        device = "cuda" if gpus > 0 else "cpu"
        model_dir = str(Path(model_dir).resolve())
        self.pool = ActorPool(
            lambda nm: actor_cls.remote(nm, model_dir, device, max(1, int(self.cpus_per_worker)),
                                        batch_size, decoder), n,
            depth=2, max_restarts=self.max_restarts, load_timeout_s=self.load_timeout_s,
            describe_resources=lambda: f"{c['cpus']:g} CPU(s), {c['gpus']:g} GPU(s)")
        try:
            self.pool.start()
            todo = collections.deque(range(len(chunks)))
            results: dict[int, dict] = {}
            bar = tqdm(total=len(df), desc="predict", unit="image", disable=not progress)

            def done(worker, i, res):
                worker.items += len(chunks[i])
                worker.busy_s += res["busy_s"]
                results[i] = res
                bar.update(len(chunks[i]))

            self.pool.drive(lambda: todo.popleft() if todo else None, lambda: bool(todo),
                            lambda actor, i: actor.predict.remote(chunks[i], str(root)),
                            done, todo.appendleft)
            bar.close()
        finally:
            self.pool.close()
        parts = [results[i]["preds"] for i in range(len(chunks))]
        labels = md.read_json(Path(model_dir) / md.MODEL_CONFIG)["labels"]
        out = (pd.concat(parts, ignore_index=True) if parts
               else pd.DataFrame({"image_id": pd.array([], dtype="string"),
                                  **{lab: np.zeros(0, np.float32) for lab in labels}}))
        skipped = [results[i]["skipped"] for i in range(len(chunks)) if len(results[i]["skipped"])]
        out.attrs["skipped"] = (pd.concat(skipped, ignore_index=True) if skipped
                                else pd.DataFrame(columns=SKIPPED_COLUMNS))
        out.attrs["n_input"] = len(df)
        out.attrs["workers"] = self.pool.report()
        return out


__all__ = ["PredictWorker", "RayPredictExecutor"]

