"""CUDA stage streams and the denoiser's CUDA graph, for the pipeline's stage bodies
(`rv2.runtime.generation_bodies`). Both are opt-in until a GPU run measures them.

Stage streams: each stage body enqueues its kernels on a stream of its own, so the
VAE decode and the QC networks of finished items run on the GPU beside the next
denoiser steps instead of queueing behind them on one stream. A body records an
event when it returns; the next stage's stream waits on the events of the items it
takes, and marks the tensors it takes as used on its stream (`record_stream`), so
the caching allocator does not hand their memory out while its kernels still read it.
With `enabled=False` every call is a no-op: the same bodies run on one stream.

Denoiser graph: the denoiser's forward at the full slot capacity (both CFG halves),
captured once in a CUDA graph and replayed every step, so a step costs one launch
instead of the UNet's few thousand, and the denoiser thread needs the GIL only
briefly. A graph replays fixed shapes: the step always runs every slot, the free
ones on zeros, and takes the busy slots' rows. `capture=False` runs the same fixed
batch without a graph (how the CPU tests check the padding).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterable

import torch

from rv2.errors import UserError

STREAM_STAGES = ("encode", "denoise", "decode", "qc", "write")


class StageStreams:
    """One CUDA stream per stage, and the events that order the items between them."""

    def __init__(self, device: torch.device, enabled: bool):
        self.enabled = enabled
        self.streams: dict[str, Any] = {}
        if enabled:
            here = torch.cuda.current_stream(device)
            for name in STREAM_STAGES:
                s = torch.cuda.Stream(device)
                s.wait_stream(here)   # the models and buffers made before the run
                self.streams[name] = s

    @contextlib.contextmanager
    def stage(self, name: str, waits: Iterable = ()):
        """Run the body on `name`'s stream once the events of the items `waits` are done."""
        if not self.enabled:
            yield
            return
        s = self.streams[name]
        seen = set()
        for it in waits:
            ev = getattr(it, "event", None)
            if ev is not None and id(ev) not in seen:
                seen.add(id(ev))
                s.wait_event(ev)
        with torch.cuda.stream(s):
            yield

    def mark(self, name: str, items: Iterable) -> None:
        """Record one event on `name`'s stream for the items its body just made."""
        if not self.enabled:
            return
        ev = torch.cuda.Event()
        ev.record(self.streams[name])
        for it in items:
            it.event = ev

    def take(self, *tensors) -> None:
        """Mark tensors made on another stage's stream as used on the current stream."""
        if not self.enabled:
            return
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.is_cuda:
                t.record_stream(torch.cuda.current_stream(t.device))


class DenoiserGraph:
    """`denoiser.predict_noise` at one fixed batch, captured in a CUDA graph on the first
    call (after `warmup` eager calls on a side stream) and replayed after that."""

    def __init__(self, denoiser, capture: bool, warmup: int = 2):
        self.den, self.capture, self.warmup = denoiser, capture, warmup
        self.graph = None
        self.static: tuple | None = None
        self.out: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """Noise predictions for the full batch; with a graph, its static output tensor,
        overwritten by the next call (take copies of what you keep)."""
        if not self.capture:
            return self.den.predict_noise(x, t, ctx)
        if self.graph is None:
            self._capture(x, t, ctx)
        for buf, v in zip(self.static, (x, t, ctx)):
            if buf.shape != v.shape or buf.dtype != v.dtype:
                raise RuntimeError(f"denoiser graph captured for {tuple(buf.shape)} {buf.dtype}, "
                                   f"called with {tuple(v.shape)} {v.dtype}")
            buf.copy_(v)
        self.graph.replay()
        return self.out

    def _capture(self, x, t, ctx) -> None:
        dev = x.device
        self.static = (x.clone(), t.clone(), ctx.clone())
        here = torch.cuda.current_stream(dev)
        side = torch.cuda.Stream(dev)
        side.wait_stream(here)
        with torch.cuda.stream(side):   # cuDNN/cuBLAS pick their algorithms outside the capture
            for _ in range(self.warmup):
                self.den.predict_noise(*self.static)
        here.wait_stream(side)
        g = torch.cuda.CUDAGraph()
        # thread_local: the other stages' threads keep launching (and syncing) on their
        # streams while this one captures; "global" would fail their calls
        with torch.cuda.graph(g, capture_error_mode="thread_local"):
            self.out = self.den.predict_noise(*self.static)
        self.graph = g


def check_cuda_options(device, denoiser, cuda_streams: bool, cuda_graph: bool) -> None:
    """A clear error for an option the run cannot honour."""
    asked = [n for n, on in (("cuda_streams", cuda_streams), ("cuda_graph", cuda_graph)) if on]
    if asked and torch.device(device).type != "cuda":
        verb, them = ("need", "them") if len(asked) > 1 else ("needs", "it")
        raise UserError(f"{' and '.join(asked)} {verb} the denoiser on a CUDA device; it is on "
                        f"{device}: drop {them} or run with --device cuda")
    if cuda_graph and not getattr(denoiser, "graph_capturable", False):
        raise UserError(f"cuda_graph: the {type(denoiser).__name__} denoiser cannot be captured in a "
                        "CUDA graph (the eager UNet can); drop cuda_graph for this backend")


__all__ = ["DenoiserGraph", "StageStreams", "check_cuda_options"]
