"""A bounded load generator with stock tritonclient clients (perf_analyzer's job, in threads).

    res = run_load("grpc", "127.0.0.1:8001", "classifier", make_inputs, concurrency=8, seconds=5)
    res.p(50), res.p(99), res.throughput, res.errors

Each worker owns one client and sends its next request when the last one is
answered (closed loop, like perf_analyzer's concurrency mode). It stops by
itself after `seconds` or `requests`, whichever comes first. Only for servers on
this machine (loopback).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)  # seconds, answered requests
    errors: list[str] = field(default_factory=list)
    error_at: list[float] = field(default_factory=list)  # time.monotonic() of each error
    elapsed: float = 0.0

    def p(self, q: float) -> float:
        import numpy as np

        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    @property
    def error_rate(self) -> float:
        n = len(self.latencies) + len(self.errors)
        return len(self.errors) / n if n else 0.0


def client_module(protocol: str):
    if protocol == "http":
        import tritonclient.http as mod
    elif protocol == "grpc":
        import tritonclient.grpc as mod
    else:
        raise ValueError(f"protocol must be 'http' or 'grpc', got {protocol!r}")
    return mod


def run_load(protocol: str, url: str, model: str, make_inputs: Callable, *, concurrency: int = 1,
             seconds: float = 5.0, requests: int | None = None, headers: dict | None = None,
             check: Callable | None = None, stop: threading.Event | None = None) -> LoadResult:
    """make_inputs(mod) -> list of InferInput; check(result) raises if an answer is wrong."""
    mod = client_module(protocol)
    res = LoadResult()
    lock = threading.Lock()
    stop = stop or threading.Event()
    count = [0]

    def worker():
        c = mod.InferenceServerClient(url, network_timeout=120.0) if protocol == "http" \
            else mod.InferenceServerClient(url)
        inputs = make_inputs(mod)
        try:
            while not stop.is_set():
                with lock:
                    if requests is not None and count[0] >= requests:
                        return
                    count[0] += 1
                t = time.perf_counter()
                try:
                    r = c.infer(model, inputs, headers=headers)
                    if check is not None:
                        check(r)
                except Exception as exc:  # noqa: BLE001 - every failure is counted and kept
                    with lock:
                        res.errors.append(f"{type(exc).__name__}: {exc}")
                        res.error_at.append(time.monotonic())
                    continue
                dt = time.perf_counter() - t
                with lock:
                    res.latencies.append(dt)
        finally:
            c.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    end = t0 + seconds
    for t in threads:
        t.join(max(0.0, end - time.perf_counter()))
    stop.set()
    for t in threads:
        t.join(120)
    res.elapsed = time.perf_counter() - t0
    return res


__all__ = ["LoadResult", "client_module", "run_load"]
