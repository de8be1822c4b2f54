"""A minimal ONNX Runtime Predictor backend and the classifier export it runs.

Stop-gap until `rv2.engines` (engine manifests, parity gates, providers) lands:
the lead should fold this into `rv2.engines` and keep one ORT backend.

    export_classifier_onnx(model, "clf.onnx", image_size=224)   # dynamic batch axis
    backend = OnnxBackend("clf.onnx", threads=2)                  # Predictor backend
    Predictor.load(model_dir, backend=backend)
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rv2.errors import MissingInputError, UserError

# ONNX Runtime 1.31 refuses IR version 14 (torch's exporter may write it): pin it.
IR_VERSION = 9
OPSET = 17


def export_classifier_onnx(model, path: str | os.PathLike, image_size: int, channels: int = 3,
                           opset: int = OPSET) -> Path:
    """The network (N x C x S x S float32 -> logits N x L) as ONNX with a dynamic batch."""
    import warnings

    import onnx
    import torch

    path = Path(path)
    x = torch.zeros(1, channels, image_size, image_size)
    model = model.eval().to("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=opset, dynamo=False)
    m = onnx.load(str(path))
    if m.ir_version > IR_VERSION:
        m.ir_version = IR_VERSION
        onnx.save(m, str(path))
    return path


class OnnxBackend:
    """An ONNX classifier graph on ONNX Runtime (CPU by default)."""

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, threads: int | None = None,
                 providers: list[str] | None = None, max_batch_size: int | None = None):
        import onnxruntime as ort

        p = Path(path)
        if not p.is_file():
            raise MissingInputError(f"ONNX file not found: {p}")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        # spinning threads steal a shared CPU from the front end
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(p), opts, providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:
            raise UserError(f"{p}: ONNX Runtime cannot load it: {exc}") from exc
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        batch = inp.shape[0]
        self.max_batch_size = max_batch_size or (batch if isinstance(batch, int) and batch > 0 else None)
        self.providers = self.session.get_providers()  # those in use, not those listed

    def logits(self, x: np.ndarray) -> np.ndarray:
        (out,) = self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})
        return out


__all__ = ["OnnxBackend", "export_classifier_onnx"]
