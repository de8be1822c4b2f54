"""`RayExecutor`: QC'd generation on a Ray cluster, exactly once, surviving lost workers.

    driver (rv2 generate)                       workers (one actor per GPU / CPU slot)
    store journal (the truth) <-- commit --     StageRunner(stages built from the recipe)
    queue of (prompt, attempt), retry rule      --> SubStore workers/<name>/ (images + journal)

The driver hands out batches of work items and applies the one retry rule
(`rv2.generate.executor.next_attempt`) to the records that come back; a record
counts once the driver's journal holds it (`ShardedStore.commit`). A worker writes
its accepted images into its own sub-store before answering, so a journaled path
is always a file. A lost worker's batches are handed out again: seeds depend only
on (prompt, attempt), so the redo is the same image; its half-done sub-store is
swept (or its finished attempts adopted) when the store is next opened.
"""
from __future__ import annotations

import collections
import json
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from rv2 import __version__
from rv2.distributed.cluster import connect, require_ray
from rv2.distributed.pool import ActorPool, WorkerError
from rv2.errors import UserError
from rv2.files import atomic_write_text
from rv2.generate.executor import ResultCallback, next_attempt
from rv2.generate.recipe import StageInfo, StageRecipe
from rv2.generate.stages import StageRunner, WorkItem
from rv2.generate.store import WORKERS, SubStore


class GenerateWorker:
    """The actor: loads the stages once, then runs batches into its sub-store."""

    def __init__(self, name: str, recipe: StageRecipe, out_dir: str, device: str, threads: int):
        self.name, self.recipe, self.out_dir = name, recipe, out_dir
        self.device, self.threads = device, threads
        self.runner: StageRunner | None = None
        self.sub: SubStore | None = None

    def load(self) -> dict:
        import torch

        torch.set_num_threads(max(1, int(self.threads)))
        self.cfg = self.recipe.config()
        self.stages = self.recipe.build(self.device)
        info = StageInfo.of(self.stages, self.cfg)
        return {"name": self.name, "node": _node_ip(), "host": socket.gethostname(),
                "pid": os.getpid(), "device": info.device, "stage_info": info,
                "rv2_version": __version__, "threads": torch.get_num_threads()}

    def process(self, items: Sequence[WorkItem], bases: dict, plan) -> dict:
        t0 = time.perf_counter()
        if self.sub is None:
            self.sub = SubStore(self.out_dir, self.name, self.cfg.store).open()
            atomic_write_text(self.sub.dir / "worker.json", json.dumps(
                {"name": self.name, "pid": os.getpid(), "host": socket.gethostname(),
                 "node": _node_ip()}))
            self.runner = StageRunner(self.stages, self.sub, plan, bases)
        self.runner.base_records, self.runner.plan = bases, plan
        before = dict(self.runner.timings)
        records = self.runner.process(list(items))
        timings = {k: v - before.get(k, 0.0) for k, v in self.runner.timings.items()}
        return {"records": records, "timings": timings, "busy_s": time.perf_counter() - t0}


def _node_ip() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001
        return socket.gethostname()


class RayExecutor:
    """`rv2 generate --executor ray`: one long-lived actor per GPU (or per
    `cpus_per_worker` CPUs when `gpus_per_worker` is 0) holds its stages; see the
    module doc. `address`: None starts a local cluster, "auto" joins the one on this
    node, "ray://HOST:PORT" goes through Ray Client (the output folder must then be
    the same path on every machine)."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None,
                 gpus_per_worker: float | None = None, cpus_per_worker: float = 1,
                 batch_size: int = 8, depth: int = 2, max_restarts: int | None = None,
                 load_timeout_s: float = 600.0, include_dashboard: bool | None = None,
                 local_cpus: int | None = None):
        require_ray()
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        if workers is not None and workers < 1:
            raise UserError(f"--workers must be at least 1, got {workers}")
        if cpus_per_worker <= 0 or (gpus_per_worker is not None and gpus_per_worker < 0):
            raise UserError("--cpus-per-worker must be > 0 and --gpus-per-worker >= 0")
        self.address, self.n_workers = address, workers
        self.gpus_per_worker, self.cpus_per_worker = gpus_per_worker, cpus_per_worker
        self.batch_size, self.depth, self.max_restarts = batch_size, depth, max_restarts
        self.load_timeout_s, self.include_dashboard = load_timeout_s, include_dashboard
        self.local_cpus = local_cpus
        self.cluster: dict = {}
        self.pool: ActorPool | None = None
        self.timings: dict = collections.defaultdict(float)

    # ------------------------------------------------------------------ start
    def connect(self) -> dict:
        if not self.cluster:
            self.cluster = connect(self.address, num_cpus=self.local_cpus,
                                   include_dashboard=self.include_dashboard)
        return self.cluster

    def _plan_workers(self) -> tuple[int, float, float]:
        c = self.connect()
        gpus = self.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if c["gpus"] >= 1 else 0.0
        if gpus > c["gpus"]:
            raise UserError(f"--gpus-per-worker {gpus:g} but the Ray cluster has {c['gpus']:g} GPU(s); "
                            "use --gpus-per-worker 0 for CPU workers")
        if self.cpus_per_worker > c["cpus"]:
            raise UserError(f"--cpus-per-worker {self.cpus_per_worker:g} but the Ray cluster has "
                            f"{c['cpus']:g} CPU(s)")
        slots = int(c["gpus"] // gpus) if gpus > 0 else int(c["cpus"] // self.cpus_per_worker)
        n = self.n_workers or max(1, slots)
        return n, gpus, float(self.cpus_per_worker)

    def start(self, recipe: StageRecipe, out_dir) -> StageInfo:
        """Start the workers; each loads its stages from `recipe`. Returns their StageInfo
        (all must agree); stops with the worker's name and reason if one cannot load."""
        ray = require_ray()
        n, gpus, cpus = self._plan_workers()
        out = str(Path(out_dir).resolve())
        device = "cuda" if gpus > 0 else "cpu"
        actor_cls = ray.remote(GenerateWorker).options(num_cpus=cpus, num_gpus=gpus, max_restarts=0,
                                                        max_concurrency=1)
        threads = max(1, int(cpus))
        c = self.cluster
        self.pool = ActorPool(
            lambda name: actor_cls.remote(name, recipe, out, device, threads), n,
            depth=self.depth, max_restarts=self.max_restarts, load_timeout_s=self.load_timeout_s,
            describe_resources=lambda: f"{c['cpus']:g} CPU(s), {c['gpus']:g} GPU(s) on "
                                       f"{c['nodes']} node(s); each worker asks {cpus:g} CPU(s), "
                                       f"{gpus:g} GPU(s)")
        infos = self.pool.start()
        return self._check_same(infos)

    def _check_same(self, infos: list[dict]) -> StageInfo:
        first = infos[0]
        for i in infos:
            if i["rv2_version"] != __version__:
                raise self._stop(WorkerError(f"worker {i['name']} on {i['node']} runs rv2 "
                                             f"{i['rv2_version']}, the driver {__version__}; install "
                                             "the same rv2 on every node"))
            if not i["stage_info"].same_run(first["stage_info"]):
                raise self._stop(WorkerError(f"worker {i['name']} on {i['node']} built other stages "
                                             f"({i['stage_info']}) than worker {first['name']} "
                                             f"({first['stage_info']})"))
        self.stage_info = first["stage_info"]
        return self.stage_info

    def _stop(self, exc: Exception) -> Exception:
        self.close()
        return exc

    # ------------------------------------------------------------------ run
    def run(self, runner: StageRunner, work: Sequence[WorkItem], max_attempts: int,
            on_result: ResultCallback | None = None) -> None:
        if self.pool is None:
            raise RuntimeError("RayExecutor.run before start()")
        store = runner.writer
        if not callable(getattr(store, "commit", None)):
            raise TypeError("the ray executor journals through a store with commit() (ShardedStore "
                            "opened with writers='multi')")
        bases, plan = runner.base_records, runner.plan
        fresh = collections.deque(work)
        retry: collections.deque = collections.deque()
        # Replacements of a lost worker also re-check their stages against the first ones.
        known = {w.name for w in self.pool.live()}

        def next_task():
            batch = []
            while len(batch) < self.batch_size and (retry or fresh):
                batch.append(retry.popleft() if retry else fresh.popleft())
            return batch or None

        def submit(actor, batch):
            new = [w for w in self.pool.live() if w.name not in known]
            for w in new:
                known.add(w.name)
                if not w.info["stage_info"].same_run(self.stage_info):
                    raise self._stop(WorkerError(f"{w.where()} built other stages than the first "
                                                 "workers"))
            return actor.process.remote(batch, {p: bases[p] for p, _ in batch}, plan)

        def on_lost(batch):
            retry.extendleft(reversed(batch))   # first in line, same (prompt, attempt) and seeds

        def done(worker, batch, result):
            worker.items += len(batch)
            worker.busy_s += result["busy_s"]
            for k, v in result["timings"].items():
                self.timings[k] += v
                runner.timings[k] += v
            counted = store.commit(result["records"])
            seen = {(r["prompt_id"], int(r["attempt"])) for r in counted}
            for r in result["records"]:   # not counted (its image not visible?): do it again
                key = (r["prompt_id"], int(r["attempt"]))
                if key not in seen and not store.is_done(key[0], max_attempts) \
                        and store.next_attempt(key[0]) == key[1]:
                    retry.append(key)
            for rec in counted:
                nxt = next_attempt(rec, max_attempts)
                if nxt is not None:
                    retry.append((rec["prompt_id"], nxt))
                if on_result is not None:
                    on_result(rec, nxt is None)

        self.pool.drive(next_task, lambda: bool(fresh or retry), submit, done, on_lost)

    # ------------------------------------------------------------------ report
    def report(self) -> dict:
        rows = self.pool.report() if self.pool else []
        return {"cluster": {k: self.cluster.get(k) for k in ("address", "dashboard_url", "cpus",
                                                              "gpus", "nodes")},
                "workers": rows, "restarts": self.pool.restarts if self.pool else 0,
                "batches_handed_out_again": self.pool.lost_batches if self.pool else 0,
                "sub_stores": WORKERS + "/"}

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


__all__ = ["GenerateWorker", "RayExecutor"]
