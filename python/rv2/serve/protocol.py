"""The served classifier on the Open Inference Protocol, apart from any transport.

One model, one version ("1"). Inputs (a request gives exactly one):

    image        FP32  [N, C, S, S] (or [N, 1, S, S]) in the model's preprocessed space
    image_bytes  BYTES [N] (or [N, 1]): encoded PNG, JPEG or DICOM files

Outputs (all by default, or those the request names):

    probabilities  FP32  [N, L], label order as in the metadata's `labels`
    labels         BYTES [N, K]: the labels at or above their stored thresholds as
                   "probability:index:label" (Triton's classification format), highest
                   first, rows padded with "" to the longest row (K may be 0)

`probabilities` also honours Triton's classification extension: a requested output
with parameter `classification: k` returns the top k as BYTES [N, k] in that format.

Requests are checked before anything runs; a bad one raises `RequestError` with the
HTTP status Triton gives the same request (garbage JSON excepted: 400 here, not 500).
Nothing from a request is ever unpickled: tensors are raw little-endian numbers or
length-prefixed byte strings.
"""
from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rv2.errors import UserError

VERSION = "1"
TENSOR_INPUT = "image"
BYTES_INPUT = "image_bytes"
PROBS = "probabilities"
LABELS = "labels"
OUTPUTS = (PROBS, LABELS)

# KServe v2 datatypes -> numpy (BYTES has no fixed size).
DTYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
          "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
          "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
KNOWN_DTYPES = set(DTYPES) | {"BYTES", "BF16"}
# KServe v2 datatypes -> the typed field of gRPC's InferTensorContents that carries them
# (the others travel only as raw bytes).
TYPED_CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT32": "int_contents",
                  "INT64": "int64_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
                  "BOOL": "bool_contents", "BYTES": "bytes_contents"}

# HTTP status -> gRPC status name (the grpc module maps names to codes).
GRPC_CODE = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED",
             411: "INVALID_ARGUMENT", 413: "RESOURCE_EXHAUSTED", 431: "RESOURCE_EXHAUSTED",
             500: "INTERNAL", 503: "UNAVAILABLE"}


class RequestError(UserError):
    """A request the server refuses: `status` is the HTTP status, the message one line."""

    def __init__(self, message: str, status: int = 400, *, retry_after: int | None = None,
                 reason: str = "OTHER"):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.reason = reason  # the failure metric's label (Triton: REJECTED, BACKEND, OTHER)

    @property
    def grpc_code(self) -> str:
        return GRPC_CODE.get(self.status, "INTERNAL")


@dataclass
class InputTensor:
    """One request input. `data`: raw little-endian bytes (binary extension or gRPC raw
    contents), a JSON list (HTTP JSON), or a list of byte strings (gRPC bytes_contents)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Any
    form: str  # "raw" | "json" | "elements"


@dataclass
class OutputRequest:
    name: str
    classification: int = 0
    binary: bool | None = None


@dataclass
class InferRequest:
    inputs: list[InputTensor]
    outputs: list[OutputRequest] | None = None
    id: str = ""
    timeout_us: int | None = None
    binary_output: bool = False
    parameters: dict = field(default_factory=dict)


@dataclass
class OutputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray | None = None       # FP32
    elements: list[bytes] | None = None   # BYTES, row-major

    def raw(self) -> bytes:
        if self.datatype == "BYTES":
            return serialize_bytes(self.elements or [])
        return np.ascontiguousarray(self.array, dtype="<f4").tobytes()

    def json_data(self) -> list:
        if self.datatype == "BYTES":
            return [e.decode("utf-8", "replace") for e in self.elements or []]
        return np.asarray(self.array, dtype=np.float32).ravel().tolist()


# ---------------------------------------------------------------- tensor bytes

def serialize_bytes(elements: Sequence[bytes]) -> bytes:
    """Triton's BYTES wire form: each element as a 4-byte little-endian length + bytes."""
    parts = []
    for e in elements:
        parts += (len(e).to_bytes(4, "little"), e)
    return b"".join(parts)


def deserialize_bytes(buf, count: int, name: str) -> list[bytes]:
    """`count` length-prefixed elements from `buf`, which they must fill exactly."""
    mv = memoryview(buf).cast("B")
    out, pos, n = [], 0, len(mv)
    for i in range(count):
        if pos + 4 > n:
            raise RequestError(f"input '{name}': BYTES data ends before element {i} of {count} "
                               "(each element is a 4-byte little-endian length, then its bytes)")
        (size,) = struct.unpack_from("<I", mv, pos)
        pos += 4
        if pos + size > n:
            raise RequestError(f"input '{name}': element {i} claims {size} bytes but only "
                               f"{n - pos} remain")
        out.append(bytes(mv[pos:pos + size]))
        pos += size
    if pos != n:
        raise RequestError(f"input '{name}': {n - pos} bytes left after {count} BYTES elements "
                           f"(shape says {count})")
    return out


# ---------------------------------------------------------------- the model

class ServedModel:
    """What the protocol needs from a `Predictor`: metadata, checked inputs, outputs."""

    def __init__(self, predictor, name: str, max_batch_size: int):
        if max_batch_size < 1:
            raise UserError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.predictor = predictor
        self.name = name
        self.max_batch_size = int(max_batch_size)
        pre = predictor.preprocessing
        self.channels, self.size = pre.channels, pre.image_size
        self.labels = list(predictor.labels)
        # Triton's classification entry "<probability>:<index>:<label>", one format per label
        self._formats = [f"%.6f:{j}:{lab.replace('%', '%%')}" for j, lab in enumerate(self.labels)]

    # ---------------------------------------------------------- routing
    def check_target(self, model: str, version: str | None) -> None:
        if model != self.name:
            raise RequestError(f"unknown model '{model}': this server serves '{self.name}'", 404)
        if version not in (None, "", VERSION):
            raise RequestError(f"unknown version '{version}' of model '{model}': "
                               f"the only version is {VERSION}", 404)

    # ---------------------------------------------------------- metadata
    def metadata(self) -> dict:
        """KServe v2 model metadata (+ `parameters`: labels, thresholds, preprocessing)."""
        pre = self.predictor.preprocessing
        return {
            "name": self.name, "versions": [VERSION],
            "platform": f"rv2_{self.predictor.backend.name}",
            "inputs": [
                {"name": TENSOR_INPUT, "datatype": "FP32", "shape": [-1, self.channels, self.size, self.size]},
                {"name": BYTES_INPUT, "datatype": "BYTES", "shape": [-1]},
            ],
            "outputs": [
                {"name": PROBS, "datatype": "FP32", "shape": [-1, len(self.labels)]},
                {"name": LABELS, "datatype": "BYTES", "shape": [-1, -1]},
            ],
            "parameters": {
                "labels": self.labels,
                "thresholds": [float(t) for t in self.predictor.thresholds],
                "threshold_rule": ">=",
                "image_size": self.size, "channels": self.channels,
                "mean": pre.mean, "std": pre.std,
                "max_batch_size": self.max_batch_size,
            },
        }

    def config(self, batching: dict) -> dict:
        """The model's configuration as Triton's ModelConfig JSON (dims without the batch
        axis, as Triton writes them); `parameters` carry the labels for gRPC clients."""
        import json

        meta = self.metadata()
        return {
            "name": self.name, "platform": meta["platform"], "max_batch_size": self.max_batch_size,
            "input": [
                {"name": TENSOR_INPUT, "data_type": "TYPE_FP32",
                 "dims": [self.channels, self.size, self.size], "optional": True},
                {"name": BYTES_INPUT, "data_type": "TYPE_STRING", "dims": [1], "optional": True},
            ],
            "output": [
                {"name": PROBS, "data_type": "TYPE_FP32", "dims": [len(self.labels)]},
                {"name": LABELS, "data_type": "TYPE_STRING", "dims": [-1]},
            ],
            "dynamic_batching": batching,
            "parameters": {"labels": {"string_value": json.dumps(self.labels)},
                           "thresholds": {"string_value": json.dumps(meta["parameters"]["thresholds"])}},
        }

    # ---------------------------------------------------------- inputs
    def parse_input(self, req: InferRequest) -> tuple[str, Any]:
        """("tensor", float32 N x C x S x S) or ("bytes", [encoded images]); RequestError if bad."""
        if len(req.inputs) != 1:
            names = [t.name for t in req.inputs]
            raise RequestError(f"expected exactly one input ('{TENSOR_INPUT}' FP32 or "
                               f"'{BYTES_INPUT}' BYTES) for model '{self.name}', got {names}")
        t = req.inputs[0]
        if t.name not in (TENSOR_INPUT, BYTES_INPUT):
            raise RequestError(f"unexpected inference input '{t.name}' for model '{self.name}' "
                               f"(inputs: '{TENSOR_INPUT}' FP32, '{BYTES_INPUT}' BYTES)")
        if t.datatype not in KNOWN_DTYPES:
            raise RequestError(f"input '{t.name}': unknown datatype '{t.datatype}'")
        if any((not isinstance(d, int)) or d < 0 for d in t.shape):
            raise RequestError(f"input '{t.name}': shape must be non-negative integers, got {list(t.shape)}")
        self._check_outputs(req)
        if t.name == TENSOR_INPUT:
            return "tensor", self._tensor(t)
        return "bytes", self._blobs(t)

    def _check_batch(self, t: InputTensor, n: int) -> None:
        if n < 1:
            raise RequestError(f"input '{t.name}': batch size must be at least 1, got {n}")
        if n > self.max_batch_size:
            raise RequestError(f"input '{t.name}': batch size {n} exceeds the maximum "
                               f"{self.max_batch_size} of model '{self.name}'")

    def _tensor(self, t: InputTensor) -> np.ndarray:
        c, s = self.channels, self.size
        if t.datatype != "FP32":
            raise RequestError(f"input '{t.name}': datatype {t.datatype}, expected FP32")
        if len(t.shape) != 4 or t.shape[1] not in (1, c) or t.shape[2:] != (s, s):
            raise RequestError(f"input '{t.name}': shape {list(t.shape)}, expected "
                               f"[N, {c}, {s}, {s}] (or [N, 1, {s}, {s}])")
        self._check_batch(t, t.shape[0])
        count = math.prod(t.shape)
        if t.form == "raw":
            mv = memoryview(t.data).cast("B")
            if mv.nbytes != 4 * count:
                raise RequestError(f"input '{t.name}': {mv.nbytes} bytes of data, shape "
                                   f"{list(t.shape)} needs {4 * count}")
            x = np.frombuffer(mv, dtype="<f4")
        else:
            try:
                x = np.asarray(t.data, dtype=np.float32).ravel()
            except (ValueError, TypeError):
                raise RequestError(f"input '{t.name}': data is not a flat or nested list of numbers") from None
            if x.size != count:
                raise RequestError(f"input '{t.name}': {x.size} values, shape {list(t.shape)} needs {count}")
        x = x.reshape(t.shape)
        if x.shape[1] == 1 and c != 1:
            x = np.repeat(x, c, axis=1)
        # may be a read-only view of the request body: the batcher copies it into the
        # batch it runs (once) and refuses NaN and infinity in that same pass
        return x

    def _blobs(self, t: InputTensor) -> list[bytes]:
        if t.datatype != "BYTES":
            raise RequestError(f"input '{t.name}': datatype {t.datatype}, expected BYTES "
                               "(encoded PNG, JPEG or DICOM files)")
        if len(t.shape) not in (1, 2) or (len(t.shape) == 2 and t.shape[1] != 1):
            raise RequestError(f"input '{t.name}': shape {list(t.shape)}, expected [N] or [N, 1]")
        n = t.shape[0]
        self._check_batch(t, n)
        if t.form == "raw":
            return deserialize_bytes(t.data, n, t.name)
        data = list(t.data) if isinstance(t.data, (list, tuple)) else None
        if data is None or len(data) != n:
            got = "not a list" if data is None else f"{len(data)} elements"
            raise RequestError(f"input '{t.name}': data is {got}, shape {list(t.shape)} needs {n}")
        if t.form == "elements":
            return [bytes(d) for d in data]
        out = []
        for i, d in enumerate(data):  # JSON carries files base64-encoded
            if not isinstance(d, str):
                raise RequestError(f"input '{t.name}': element {i} is not a string "
                                   "(send files base64-encoded in JSON, or use binary data)")
            try:
                out.append(base64.b64decode(d, validate=True))
            except (binascii.Error, ValueError):
                raise RequestError(f"input '{t.name}': element {i} is not valid base64") from None
        return out

    def _check_outputs(self, req: InferRequest) -> None:
        for o in req.outputs or []:
            if o.name not in OUTPUTS:
                raise RequestError(f"unexpected inference output '{o.name}' for model "
                                   f"'{self.name}' (outputs: {', '.join(OUTPUTS)})")
            if o.classification and o.name != PROBS:
                raise RequestError(f"output '{o.name}': classification applies to '{PROBS}' only")
            if not isinstance(o.classification, int) or o.classification < 0:
                raise RequestError(f"output '{o.name}': classification must be a non-negative "
                                   f"integer, got {o.classification!r}")

    # ---------------------------------------------------------- outputs
    def outputs(self, req: InferRequest, probs: np.ndarray) -> list[OutputTensor]:
        wanted = req.outputs or [OutputRequest(PROBS), OutputRequest(LABELS)]
        out = []
        for o in wanted:
            if o.name == PROBS and o.classification:
                k = min(o.classification, len(self.labels))
                out.append(OutputTensor(PROBS, "BYTES", (len(probs), k),
                                        elements=self._top_k(probs, k)))
            elif o.name == PROBS:
                out.append(OutputTensor(PROBS, "FP32", tuple(probs.shape), array=probs))
            else:
                k, elements = self._positives(probs)
                out.append(OutputTensor(LABELS, "BYTES", (len(probs), k), elements=elements))
        return out

    def _entry(self, p: float, j: int) -> bytes:
        return (self._formats[j] % p).encode()

    def _top_k(self, probs: np.ndarray, k: int) -> list[bytes]:
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [self._entry(float(probs[i, j]), int(j)) for i in range(len(probs)) for j in order[i]]

    def _positives(self, probs: np.ndarray) -> tuple[int, list[bytes]]:
        """Each row's labels at or above their thresholds, most probable first (ties in
        label order); rows padded with empty elements to the longest."""
        rows = []
        for on, p in zip(self.predictor.positive(probs).tolist(), probs.tolist()):
            idx = [j for j, v in enumerate(on) if v]
            idx.sort(key=p.__getitem__, reverse=True)  # reverse keeps ties in label order
            rows.append([(self._formats[j] % p[j]).encode() for j in idx])
        k = max((len(r) for r in rows), default=0)
        return k, [e for r in rows for e in r + [b""] * (k - len(r))]


def parse_label_entry(entry: bytes | str) -> tuple[float, int, str]:
    """"0.812345:3:Edema" -> (0.812345, 3, "Edema") (for clients and tests)."""
    text = entry.decode() if isinstance(entry, bytes) else entry
    p, j, label = text.split(":", 2)
    return float(p), int(j), label


__all__ = [
    "BYTES_INPUT",
    "DTYPES",
    "KNOWN_DTYPES",
    "LABELS",
    "PROBS",
    "TENSOR_INPUT",
    "TYPED_CONTENTS",
    "VERSION",
    "InferRequest",
    "InputTensor",
    "OutputRequest",
    "OutputTensor",
    "RequestError",
    "ServedModel",
    "deserialize_bytes",
    "parse_label_entry",
    "serialize_bytes",
]
