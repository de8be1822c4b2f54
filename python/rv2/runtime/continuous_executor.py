"""`ContinuousExecutor`: the Executor port (`rv2.generate.executor`) on the pipeline
scheduler: stages overlap on their own threads, the denoiser batch has a fixed
number of slots that items join at step boundaries, retries by the one rule.

`backend`: "native" (rv2._C's scheduler; an error where it is not built),
"python" (the twin, same semantics) or "auto" (native where built).
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

from rv2.generate.executor import ResultCallback
from rv2.generate.stages import StageRunner, WorkItem
from rv2.runtime.pipeline_scheduler import native_scheduler, run_pipeline

log = logging.getLogger("rv2.runtime")


class ContinuousExecutor:
    """capacity: denoiser slots; batch_size: items per encode/decode/QC/write call;
    queue_capacity: items waiting between two stages at most (default 2 x capacity);
    write_threads: image encoders/writers; fused: the fused CFG + scheduler update kernel
    (default: on CUDA where rv2._C has it); cuda_streams, cuda_graph: a CUDA stream per
    stage, the denoiser step in a CUDA graph (`rv2.runtime.cuda_overlap`); fixed_batch:
    the denoiser runs every slot each step (free ones on zeros), as the graph does, for
    backends built for one batch size; speculate: idle slots start a prompt's next attempt
    before its current one is judged (`rv2.runtime.pipeline_scheduler`)."""

    def __init__(self, capacity: int = 8, batch_size: int | None = None,
                 queue_capacity: int | None = None, write_threads: int | None = None,
                 backend: str = "auto", fused: bool | None = None, cuda_streams: bool = False,
                 cuda_graph: bool = False, fixed_batch: bool = False, speculate: bool = False):
        if backend not in ("auto", "native", "python"):
            raise ValueError(f"backend must be auto, native or python, got {backend!r}")
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.native = backend == "native" or (backend == "auto" and native_scheduler() is not None)
        self.name = "native" if self.native else "python"
        self.capacity = capacity
        self.batch_size = batch_size or capacity
        self.queue_capacity = queue_capacity or 2 * capacity
        self.write_threads = write_threads or max(1, min(4, os.cpu_count() or 1))
        self.fused = fused            # fused CFG + update kernel (default: on CUDA where built)
        self.cuda_streams, self.cuda_graph, self.fixed_batch = cuda_streams, cuda_graph, fixed_batch
        self.speculate = speculate
        self.last_stats: dict | None = None
        self.bodies = None

    @property
    def live_stats(self) -> dict:
        """Queue depths and slot occupancy so far (for a progress bar)."""
        return dict(self.bodies.live) if self.bodies is not None else {}

    def run(self, runner: StageRunner, work: Sequence[WorkItem], max_attempts: int,
            on_result: ResultCallback | None = None) -> None:
        from rv2.runtime.generation_bodies import GenerationBodies

        pids = sorted({p for p, _ in work})
        index = {p: i for i, p in enumerate(pids)}
        self.bodies = GenerationBodies(runner, pids, self.capacity, on_result, fused=self.fused,
                                       cuda_streams=self.cuda_streams, cuda_graph=self.cuda_graph,
                                       fixed_batch=self.fixed_batch)
        self.last_stats = run_pipeline(self.bodies, [(index[p], a) for p, a in work], max_attempts,
                                       self.capacity, self.batch_size, self.queue_capacity,
                                       self.write_threads, native=self.native,
                                       speculate=self.speculate)


__all__ = ["ContinuousExecutor"]
