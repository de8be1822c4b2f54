"""Under load: graceful SIGTERM loses nothing; a bounded loopback load test has no errors
and flat memory."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from rv2.serve.loadgen import run_load

from .conftest import SIZE, tensor_input


def _x(seed=0, n=1):
    return np.random.default_rng(seed).normal(size=(n, 3, SIZE, SIZE)).astype(np.float32)


def _check(r):
    p = r.as_numpy("probabilities")
    assert p.shape == (1, 14) and np.isfinite(p).all()


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_sigterm_under_load_finishes_in_flight_and_exits_0(clf_dir):
    cmd = [sys.executable, "-m", "rv2.cli", "serve", "--model", str(clf_dir), "--device", "cpu",
           "--http-port", "0", "--grpc-port", "0", "--threads", "1", "--max-batch-size", "8",
           "--max-queue-delay-microseconds", "2000"]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "ready on" in line:
                break
        ready = "".join(lines)
        m = re.search(r"HTTP http://127\.0\.0\.1:(\d+)/v2, gRPC 127\.0\.0\.1:(\d+)", ready)
        assert m, ready
        http_port, grpc_port = m.groups()
        stop = threading.Event()
        results = {}

        def load(proto, url):
            results[proto] = run_load(proto, url, "classifier",
                                      lambda mod: [tensor_input(mod, _x(1))], concurrency=4,
                                      seconds=240, check=_check, stop=stop)

        threads = [threading.Thread(target=load, args=("http", f"127.0.0.1:{http_port}")),
                   threading.Thread(target=load, args=("grpc", f"127.0.0.1:{grpc_port}"))]
        for t in threads:
            t.start()
        time.sleep(3.0)  # requests in flight and queued
        t_term = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(180)
        stop.set()
        for t in threads:
            t.join(180)
        rest = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 0, rest
    answered = re.search(r"stopped: (\d+) requests answered", rest)
    assert answered, rest
    got = sum(len(r.latencies) for r in results.values())
    assert got > 0
    # every request the server answered reached its client: nothing accepted was lost
    assert int(answered.group(1)) == got, (answered.group(0), got)
    early = [e for r in results.values() for e, at in zip(r.errors, r.error_at) if at < t_term]
    assert not early, early[:3]


@pytest.mark.parametrize("seconds", [5, pytest.param(60, marks=pytest.mark.slow)])
def test_bounded_loopback_load_no_errors_flat_memory(server, seconds):
    urls = {"http": f"127.0.0.1:{server.http_port}", "grpc": f"127.0.0.1:{server.grpc_port}"}

    def burst(secs):
        out = {}
        threads = [threading.Thread(target=lambda p=p: out.__setitem__(p, run_load(
            p, urls[p], "classifier", lambda mod: [tensor_input(mod, _x(2))], concurrency=8,
            seconds=secs, check=_check))) for p in urls]
        for t in threads:
            t.start()
        for t in threads:
            t.join(secs + 180)
        return out

    burst(1.0)  # clients, buffers and pools allocated
    before = _rss_mb()
    out = burst(seconds)
    grown = _rss_mb() - before
    n = sum(len(r.latencies) for r in out.values())
    errors = [e for r in out.values() for e in r.errors]
    assert n > 0 and not errors, errors[:3]
    assert grown < 64, f"resident memory grew {grown:.0f} MB over {n} requests"
    assert server.service.active == 0 and server.service.batcher.pending() == 0
