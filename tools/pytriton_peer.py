#!/usr/bin/env python
"""The peer for tools/bench_serve.py: NVIDIA Triton (through PyTriton) serving the same
two models, run by a side environment's interpreter (PyTriton pins numpy<2, so it
never shares rv2's environment).

    side-venv/bin/python tools/pytriton_peer.py MODEL.onnx THREADS HTTP GRPC METRICS

Serves `trivial` (zeros) and `classifier` (the ONNX graph on ONNX Runtime CPU,
dynamic batching up to 8, sigmoid outputs; a one-channel graph gets the first
channel) with input `image` FP32 [3, S, S] and
output `probabilities`; serves until stdin closes (the bench polls readiness). This file
imports nothing from rv2.
"""
from __future__ import annotations

import sys
import threading

import numpy as np


def main() -> None:
    onnx_path, threads, http, grpc, metrics = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:6])
    import onnxruntime as ort
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    size = int(inp.shape[2])
    # rv2's engines take one channel of pixels (normalisation folded in); the peer takes
    # the same 3-channel request as rv2 serve and feeds the first channel (the bench
    # compares times, not values)
    channels = int(inp.shape[1])
    labels = int(sess.get_outputs()[0].shape[1])

    @batch
    def classify(image):
        (z,) = sess.run(None, {inp.name: np.ascontiguousarray(image[:, :channels], dtype=np.float32)})
        return {"probabilities": (1.0 / (1.0 + np.exp(-z))).astype(np.float32)}

    @batch
    def trivial(image):
        return {"probabilities": np.zeros((len(image), labels), np.float32)}

    config = TritonConfig(http_address="127.0.0.1", http_port=http, grpc_address="127.0.0.1",
                          grpc_port=grpc, metrics_address="127.0.0.1", metrics_port=metrics)
    spec = {"inputs": [Tensor(name="image", dtype=np.float32, shape=(3, size, size))],
                "outputs": [Tensor(name="probabilities", dtype=np.float32, shape=(labels,))]}
    with Triton(config=config) as triton:
        triton.bind(model_name="classifier", infer_func=classify,
                    config=ModelConfig(max_batch_size=8, batcher=DynamicBatcher()), **spec)
        triton.bind(model_name="trivial", infer_func=trivial,
                    config=ModelConfig(max_batch_size=8, batcher=DynamicBatcher()), **spec)
        triton.run()
        done = threading.Event()
        threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
        done.wait()


if __name__ == "__main__":
    main()
