"""Prometheus metrics named like Triton's (text exposition format, no dependency).

Counters, labelled by model and version as Triton labels them:

    nv_inference_request_success            requests answered
    nv_inference_request_failure{reason}    requests refused or failed (REJECTED: queue
                                            full, timed out, shutting down; BACKEND:
                                            the compute failed; OTHER: a bad request)
    nv_inference_count                      inferences (batch rows) computed
    nv_inference_exec_count                 backend executions (count / exec_count is
                                            the batching ratio)
    nv_inference_request_duration_us        cumulative end-to-end time in the server
    nv_inference_queue_duration_us          cumulative time waiting in the batcher queue
    nv_inference_compute_infer_duration_us  cumulative time in the backend call

Histograms (Triton names its one histogram `..._histogram_ms`), in microseconds:

    nv_inference_request_duration_histogram_us, nv_inference_queue_duration_histogram_us,
    nv_inference_compute_infer_duration_histogram_us

Gauges: nv_inference_pending_request_count (queued now), rv2_server_ready.
"""
from __future__ import annotations

import bisect
import threading

# microseconds: 100 us .. 10 s
BUCKETS_US = (100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
              1000000, 2500000, 10000000)
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")


class _Histogram:
    def __init__(self):
        self.counts = [0] * (len(BUCKETS_US) + 1)
        self.sum = 0.0
        self.n = 0

    def observe(self, us: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS_US, us)] += 1
        self.sum += us
        self.n += 1


class Metrics:
    def __init__(self, model: str, version: str = "1"):
        self.labels = f'model="{model}",version="{version}"'
        self._lock = threading.Lock()
        self.success = 0
        self.failure = dict.fromkeys(FAILURE_REASONS, 0)
        self.inference_count = 0
        self.exec_count = 0
        self.request_us = 0.0
        self.queue_us = 0.0
        self.compute_us = 0.0
        self.h_request, self.h_queue, self.h_compute = _Histogram(), _Histogram(), _Histogram()
        self.pending = lambda: 0
        self.ready = lambda: False

    def request_done(self, seconds: float, *, queue_s: float = 0.0, compute_s: float = 0.0,
                     ok: bool = True, reason: str = "OTHER") -> None:
        us, q, c = seconds * 1e6, queue_s * 1e6, compute_s * 1e6
        with self._lock:
            if ok:
                self.success += 1
                self.queue_us += q
                self.compute_us += c
                self.h_queue.observe(q)
                self.h_compute.observe(c)
            else:
                self.failure[reason if reason in self.failure else "OTHER"] += 1
            self.request_us += us
            self.h_request.observe(us)

    def batch_done(self, requests: int, rows: int, compute_s: float) -> None:
        with self._lock:
            self.inference_count += rows
            self.exec_count += 1

    def render(self) -> str:
        lab = self.labels
        out: list[str] = []

        def metric(name, kind, help_, rows):
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(rows)

        def hist(name, help_, h: _Histogram):
            rows, cum = [], 0
            for le, c in zip(list(BUCKETS_US) + ["+Inf"], h.counts):
                cum += c
                rows.append(f'{name}_bucket{{{lab},le="{le}"}} {cum}')
            rows += [f"{name}_sum{{{lab}}} {h.sum:.0f}", f"{name}_count{{{lab}}} {h.n}"]
            metric(name, "histogram", help_, rows)

        with self._lock:
            metric("nv_inference_request_success", "counter",
                   "Number of successful inference requests", [f"nv_inference_request_success{{{lab}}} {self.success}"])
            metric("nv_inference_request_failure", "counter",
                   "Number of failed inference requests, by reason",
                   [f'nv_inference_request_failure{{{lab},reason="{r}"}} {n}' for r, n in self.failure.items()])
            metric("nv_inference_count", "counter", "Number of inferences performed (batch rows)",
                   [f"nv_inference_count{{{lab}}} {self.inference_count}"])
            metric("nv_inference_exec_count", "counter", "Number of model executions (batches)",
                   [f"nv_inference_exec_count{{{lab}}} {self.exec_count}"])
            for name, v, help_ in (
                    ("nv_inference_request_duration_us", self.request_us, "Cumulative request duration"),
                    ("nv_inference_queue_duration_us", self.queue_us, "Cumulative time requests spent queued"),
                    ("nv_inference_compute_infer_duration_us", self.compute_us, "Cumulative compute time")):
                metric(name, "counter", f"{help_} in microseconds", [f"{name}{{{lab}}} {v:.0f}"])
            hist("nv_inference_request_duration_histogram_us", "Request duration in microseconds", self.h_request)
            hist("nv_inference_queue_duration_histogram_us", "Queue time in microseconds", self.h_queue)
            hist("nv_inference_compute_infer_duration_histogram_us", "Compute time in microseconds", self.h_compute)
        metric("nv_inference_pending_request_count", "gauge", "Requests waiting in the queue",
               [f"nv_inference_pending_request_count{{{lab}}} {self.pending()}"])
        metric("rv2_server_ready", "gauge", "1 when the model is loaded and warm",
               [f"rv2_server_ready {int(self.ready())}"])
        return "\n".join(out) + "\n"


def parse_text(text: str) -> dict[str, float]:
    """{'name{labels}': value} from the exposition text (for tests and the benchmark)."""
    vals = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, v = line.rpartition(" ")
            vals[key] = float(v)
    return vals


__all__ = ["BUCKETS_US", "Metrics", "parse_text"]
