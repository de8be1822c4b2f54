"""A pool of long-lived Ray actors, one per GPU or CPU slot, each holding its models.

The driver owns the work: it hands batches to workers (up to `depth` queued per
worker, so none idles between batches), and when a worker is lost (killed, out
of memory, its node gone) every batch it held goes back to the caller
(`on_lost`) to be handed out again, and a replacement worker is started. A
worker that cannot load its models, or a batch that raises, stops the run with
the worker's name, node and reason; nothing waits forever for a worker that no
node can host.
"""
from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rv2.errors import RV2Error

log = logging.getLogger("rv2.distributed")


class WorkerError(RV2Error):
    """A worker could not load its models, or a batch failed in it: the run stops."""


@dataclass
class Worker:
    name: str
    actor: Any
    node: str = "?"
    pid: int | None = None
    device: str = "?"
    info: Any = None
    started: float = field(default_factory=time.perf_counter)
    ended: float | None = None
    batches: int = 0
    items: int = 0
    busy_s: float = 0.0
    lost: bool = False
    outstanding: collections.deque = field(default_factory=collections.deque)

    def where(self) -> str:
        return f"worker {self.name} (node {self.node}, pid {self.pid})"


def _cause(exc: BaseException) -> str:
    """The worker-side exception of a Ray error, as one line."""
    cause = getattr(exc, "cause", None) or exc
    text = f"{type(cause).__name__}: {cause}"
    return " ".join(text.split())[:500]


class ActorPool:
    """`make_actor(name)` -> a Ray actor handle with `load()` (returns a dict with at least
    node, pid, device; raises if the models cannot be loaded) and the work method that
    `submit(actor, task)` calls."""

    def __init__(self, make_actor: Callable[[str], Any], n_workers: int, *, depth: int = 2,
                 max_restarts: int | None = None, load_timeout_s: float = 600.0,
                 describe_resources: Callable[[], str] = lambda: ""):
        import ray

        self.ray = ray
        self.make_actor = make_actor
        self.n_workers = n_workers
        self.depth = depth
        self.max_restarts = 3 * n_workers if max_restarts is None else max_restarts
        self.load_timeout_s = load_timeout_s
        self.describe_resources = describe_resources
        self.workers: list[Worker] = []     # every worker ever started, lost ones included
        self.loading: dict[Any, tuple[Worker, float]] = {}
        self.restarts = 0
        self.lost_batches = 0

    # ------------------------------------------------------------------ lifecycle
    def _spawn(self, name: str) -> Worker:
        w = Worker(name=name, actor=self.make_actor(name))
        self.workers.append(w)
        self.loading[w.actor.load.remote()] = (w, time.perf_counter())
        return w

    def start(self) -> list[dict]:
        """Start every worker and wait until all have loaded their models."""
        for i in range(self.n_workers):
            self._spawn(f"w{i:03d}")
        infos = []
        while self.loading:
            infos += self._wait_loads(timeout=1.0)
        return infos

    def live(self) -> list[Worker]:
        return [w for w in self.workers if not w.lost and w.info is not None]

    def _wait_loads(self, timeout: float) -> list[dict]:
        ready, _ = self.ray.wait(list(self.loading), num_returns=1, timeout=timeout)
        out = []
        for ref in ready:
            w, _ = self.loading.pop(ref)
            try:
                info = self.ray.get(ref)
            except self.ray.exceptions.RayActorError as exc:
                if getattr(exc, "cause", None) is not None or "creation task" in str(exc):
                    raise self._fail(WorkerError(f"{w.where()}: could not start: {_cause(exc)}"))
                self._lost(w, "died while loading its models")
                continue
            except self.ray.exceptions.RayError as exc:
                raise self._fail(WorkerError(f"{w.where()}: could not load its models: {_cause(exc)}"))
            w.node, w.pid, w.device, w.info = info["node"], info["pid"], info["device"], info
            w.started = time.perf_counter()
            out.append(info)
        now = time.perf_counter()
        for ref, (w, t0) in list(self.loading.items()):
            if now - t0 > self.load_timeout_s and not self.live():
                raise self._fail(WorkerError(
                    f"worker {w.name} was not placed or loaded within {self.load_timeout_s:.0f} s and "
                    f"no other worker is alive; the cluster has {self.describe_resources()}"))
        return out

    def _fail(self, exc: Exception) -> Exception:
        self.close()
        return exc

    def _lost(self, w: Worker, why: str) -> list:
        """Mark `w` lost; start a replacement while the budget allows. Returns its batches."""
        w.lost, w.ended = True, time.perf_counter()
        tasks = list(w.outstanding)
        w.outstanding.clear()
        self.lost_batches += len(tasks)
        try:
            self.ray.kill(w.actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
        log.warning("%s lost (%s); %d batch(es) handed out again", w.where(), why, len(tasks))
        if self.restarts < self.max_restarts:
            self.restarts += 1
            self._spawn(f"{w.name.split('-')[0]}-r{self.restarts}")
        elif not self.live() and not self.loading:
            raise self._fail(WorkerError(f"every worker is lost and the restart budget "
                                         f"({self.max_restarts}) is spent; last: {w.where()}: {why}"))
        return tasks

    def close(self) -> None:
        for w in self.workers:
            if w.ended is None:
                w.ended = time.perf_counter()
            try:
                self.ray.kill(w.actor, no_restart=True)
            except Exception:  # noqa: BLE001
                pass
        self.loading.clear()

    # ------------------------------------------------------------------ work
    def drive(self, next_task: Callable[[], Any], pending: Callable[[], bool],
              submit: Callable[[Any, Any], Any], on_result: Callable[[Worker, Any, Any], None],
              on_lost: Callable[[Any], None]) -> None:
        """Hand out tasks until none is `pending()` and none is in flight. `submit(actor,
        task)` returns the ObjectRef; `on_result(worker, task, result)` may queue new tasks;
        the tasks of a lost worker go to `on_lost` (in the order they were handed out)."""
        inflight: dict[Any, tuple[Worker, Any]] = {}
        while True:
            for level in range(1, self.depth + 1):   # breadth first: every worker busy first
                for w in self.live():
                    if len(w.outstanding) < level and pending():
                        task = next_task()
                        ref = submit(w.actor, task)
                        w.outstanding.append((ref, task))
                        inflight[ref] = (w, task)
            if not inflight:
                if not pending():
                    return
                if not self.loading:
                    raise self._fail(WorkerError("no worker is alive and none is starting"))
                self._wait_loads(timeout=1.0)   # only replacements left: wait for one
                continue
            if self.loading:
                self._wait_loads(timeout=0)
            ready, _ = self.ray.wait(list(inflight), num_returns=1, timeout=1.0)
            for ref in ready:
                if ref not in inflight:
                    continue
                w, task = inflight.pop(ref)
                try:
                    result = self.ray.get(ref)
                except (self.ray.exceptions.RayActorError,
                        getattr(self.ray.exceptions, "ActorUnavailableError", ())) as exc:
                    for r, t in self._lost(w, _cause(exc)):
                        inflight.pop(r, None)
                        on_lost(t)
                    continue
                except self.ray.exceptions.RayError as exc:
                    raise self._fail(WorkerError(f"{w.where()}: a batch failed: {_cause(exc)}"))
                w.outstanding = collections.deque(x for x in w.outstanding if x[0] != ref)
                w.batches += 1
                on_result(w, task, result)

    def report(self) -> list[dict]:
        rows = []
        now = time.perf_counter()
        for w in self.workers:
            wall = ((w.ended or now) - w.started) if w.info is not None else 0.0
            rows.append({"worker": w.name, "node": w.node, "pid": w.pid, "device": w.device,
                         "lost": w.lost, "batches": w.batches, "items": w.items,
                         "busy_s": round(w.busy_s, 3), "wall_s": round(wall, 3),
                         "items_per_s": round(w.items / w.busy_s, 4) if w.busy_s else None,
                         "utilization": round(w.busy_s / wall, 3) if wall else None})
        return rows


__all__ = ["ActorPool", "Worker", "WorkerError"]
