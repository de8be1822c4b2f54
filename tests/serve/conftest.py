"""A small trained classifier, servers on free loopback ports, and stock tritonclient clients."""
from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[http,grpc] (pip install 'rv2[test]')")

from rv2.classify.predictor import Predictor
from rv2.serve.server import ServerThread
from rv2.serve.service import ServeSettings


def _classify_conftest():
    """tests/classify/conftest.py (its visible-label image maker), loaded by path."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "classify" / "conftest.py"
    spec = importlib.util.spec_from_file_location("rv2_tests_classify_conftest", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


make_manifest = _classify_conftest().make_manifest

SIZE = 32


@pytest.fixture(scope="session")
def clf_dir(tmp_path_factory):
    """One short CPU training (image size 32): a complete classifier folder."""
    import torch
    from rv2.classify import ClassifierConfig, train_classifier

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("serve_clf")
    real = make_manifest(base / "real", 24, seed=21, prefix="r")
    val = make_manifest(base / "val", 16, seed=22, prefix="v", split="val", uncertain_rate=0,
                        unknown_rate=0)
    cfg = ClassifierConfig(strategy="real", real=str(real), val=str(val), out=str(base / "model"),
                           image_size=SIZE, init="scratch", epochs=1, batch_size=8, lr=1e-3,
                           num_workers=0, cache_images=True, progress=False)
    try:
        return train_classifier(cfg)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def predictor(clf_dir):
    return Predictor.load(clf_dir, "cpu")


def settings(**kw) -> ServeSettings:
    base = {"http_port": 0, "grpc_port": 0, "host": "127.0.0.1", "decode_threads": 1, "keepalive_s": 30.0,
                "shutdown_grace_s": 10.0}
    base.update(kw)
    return ServeSettings(**base)


@pytest.fixture(scope="module")
def server(predictor):
    with ServerThread(predictor, settings(max_batch_size=8, max_queue_delay_microseconds=1000)) as s:
        yield s


def clients(s):
    import tritonclient.grpc as tg
    import tritonclient.http as th

    return (th.InferenceServerClient(f"127.0.0.1:{s.http_port}"),
            tg.InferenceServerClient(f"127.0.0.1:{s.grpc_port}"))


def tensor_input(mod, x, name="image", dtype="FP32"):
    i = mod.InferInput(name, list(x.shape), dtype)
    i.set_data_from_numpy(x)
    return i


def bytes_input(mod, blobs, name="image_bytes"):
    arr = np.array(list(blobs), dtype=object)
    i = mod.InferInput(name, [len(arr)], "BYTES")
    i.set_data_from_numpy(arr)
    return i


class GatedBackend:
    """The real backend behind a gate the test opens: requests pile up in the queue."""

    def __init__(self, inner, max_batch_size=None):
        self.inner = inner
        self.name = "gated"
        self.max_batch_size = max_batch_size
        self.gate = threading.Event()
        self.gate.set()  # open for the warm-up; tests close it
        self.gate_timeout = 30.0  # a closed gate opens by itself after this
        self.calls = 0

    def logits(self, x):
        self.gate.wait(self.gate_timeout)
        self.calls += 1
        return self.inner.logits(x)


def gated_predictor(predictor, max_batch_size=1):
    return Predictor(predictor.labels, predictor.thresholds, predictor.preprocessing,
                     GatedBackend(predictor.backend, max_batch_size), predictor.model_dir)
