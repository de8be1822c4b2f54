"""ONNX export of a `GraphSpec`, pinned so that ONNX Runtime 1.31 and TensorRT load it.

* TorchScript-based exporter (`dynamo=False`): faster to export and gave faster
  graphs than the dynamo exporter here; opset 17 (LayerNorm as one op).
* IR version pinned to 8 (the lowest that carries opset 17): newer onnx packages
  write IR 10-12 by default, and ONNX Runtime 1.31 rejects IR 14.
* Weights move to one external data file (`model.onnx.data`) when the graph
  passes 2 GB (protobuf's limit); below that the file is self-contained.
* The batch axis is dynamic; every other axis is fixed by the target profile.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

from rv2.errors import UserError
from rv2.export.graphs import GraphSpec, in_precision

OPSET = 17
IR_VERSION = 8
EXTERNAL_DATA_ABOVE = 2 * 1024 ** 3 - 64 * 1024 ** 2   # a margin under protobuf's 2 GiB
EXTERNAL_SUFFIX = ".data"


class OnnxError(UserError):
    """An ONNX file that cannot be used (missing external data, unreadable graph)."""


def export_onnx(spec: GraphSpec, path: str | os.PathLike, precision: str = "fp32",
                example_batch: int = 2) -> Path:
    """Write `spec`'s graph to `path` (plus `path.data` when large); returns `path`."""
    import onnx
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = in_precision(spec.module, precision).eval()
    device = next(module.parameters()).device
    example = tuple(x.to(device) for x in spec.example(example_batch))
    names_in = [t.name for t in spec.inputs]
    names_out = [t.name for t in spec.outputs]
    axes = {n: {0: "batch"} for n in names_in + names_out}
    tmp = path.with_name(f".{path.name}.export")
    tmp.mkdir(parents=True, exist_ok=True)
    raw = tmp / path.name
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about python control flow
        torch.onnx.export(module, example, str(raw), input_names=names_in, output_names=names_out,
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False,
                          do_constant_folding=True)
    model = onnx.load(str(raw), load_external_data=True)
    model.ir_version = IR_VERSION
    big = model.ByteSize() > EXTERNAL_DATA_ABOVE if _fits_bytesize(model) else True
    for f in (path, path.with_name(path.name + EXTERNAL_SUFFIX)):
        f.unlink(missing_ok=True)
    if big:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + EXTERNAL_SUFFIX, size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    check_onnx(path)
    return path


def _fits_bytesize(model) -> bool:
    try:
        model.ByteSize()
        return True
    except Exception:  # noqa: BLE001 - protobuf refuses to size messages over 2 GB
        return False


def external_files(path: str | os.PathLike) -> list[Path]:
    """The external data files an ONNX graph names (read without loading the weights)."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    path = Path(path)
    model = _load_graph(path)
    files = set()
    for t in _get_all_tensors(model):
        if uses_external_data(t):
            files.add(path.parent / ExternalDataInfo(t).location)
    return sorted(files)


def _load_graph(path: Path):
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001
        raise OnnxError(f"{path}: not a readable ONNX graph ({type(exc).__name__}); "
                        "rebuild it with `rv2 build-engines`") from None


def check_onnx(path: str | os.PathLike) -> Path:
    """The graph reads, carries the pinned IR version, and its external data is present."""
    path = Path(path)
    if not path.is_file():
        raise OnnxError(f"ONNX file not found: {path}; rebuild with `rv2 build-engines`")
    model = _load_graph(path)
    if model.ir_version > IR_VERSION:
        raise OnnxError(f"{path}: IR version {model.ir_version} > {IR_VERSION}, which ONNX Runtime "
                        "1.31 may refuse; re-export with `rv2 build-engines`")
    missing = [f for f in external_files(path) if not f.is_file()]
    if missing:
        raise OnnxError(f"{path}: external data file {missing[0].name} is missing (it must sit next "
                        f"to {path.name}); copy it along or rebuild with `rv2 build-engines`")
    return path


def onnx_io(path: str | os.PathLike) -> dict:
    """{"inputs": [...], "outputs": [...]} names, shapes (-1 for symbolic axes) and dtypes."""
    import onnx

    model = _load_graph(Path(path))
    kinds = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64",
             onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.INT32: "int32"}

    def info(v):
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        return {"name": v.name, "shape": dims, "dtype": kinds.get(t.elem_type, str(t.elem_type))}

    return {"inputs": [info(v) for v in model.graph.input],
            "outputs": [info(v) for v in model.graph.output]}


__all__ = ["export_onnx", "check_onnx", "external_files", "onnx_io", "OnnxError", "OPSET",
           "IR_VERSION"]
