"""The three engine backends: how each is built and how it runs.

    onnxruntime   the exported ONNX, run by an ONNX Runtime session (CPU execution
                  provider; CUDA where onnxruntime-gpu is installed). The session's
                  providers are checked after it is created: a listed provider that
                  did not take the graph is a refusal, never a silent CPU fallback.
    aotinductor   `torch.export` with a dynamic batch dimension in the profile's
                  range, compiled ahead of time by Inductor into a `.pt2` package
                  (CPU or CUDA).
    tensorrt      a plan built from the ONNX with TensorRT's Python API: one
                  optimisation profile (min / opt / max batch), strongly typed
                  networks on TensorRT 11+ (precision from the graph), the FP16
                  flag on 10.x, a timing cache kept next to the plan.

Every runner takes and returns torch tensors on its device, batch first, and
refuses a batch outside the engine's profile.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from rv2.engines.manifest import EngineError
from rv2.export.graphs import GraphSpec, TensorSpec, in_precision

PLAN = "model.plan"
PACKAGE = "model.pt2"
TIMING_CACHE = "timing.cache"
TORCH_DTYPES = {"float32": torch.float32, "int64": torch.int64, "float16": torch.float16}


def tensorrt_missing() -> str | None:
    """None when `import tensorrt` works, else the one-line reason."""
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return (f"TensorRT not available ({type(exc).__name__}: {exc}); TensorRT plans skipped, "
                "the other backends are built (install TensorRT from NVIDIA's index to build plans)")
    return None


class Runner:
    """Common part of the runners: I/O specs, batch range and the batch check."""

    backend = ""

    def __init__(self, manifest: dict, path: Path, device: torch.device):
        self.manifest, self.path, self.device = manifest, Path(path), torch.device(device)
        self.inputs = [TensorSpec(t["name"], tuple(t["shape"]), t["dtype"]) for t in manifest["inputs"]]
        self.outputs = [TensorSpec(t["name"], tuple(t["shape"]), t["dtype"]) for t in manifest["outputs"]]
        self.min_batch, self.max_batch = (int(b) for b in manifest["batch_range"])
        self.component = manifest["component"]

    def check_batch(self, xs: Sequence[torch.Tensor]) -> int:
        n = int(xs[0].shape[0])
        if not self.min_batch <= n <= self.max_batch:
            raise EngineError(
                f"{self.path}: batch {n} is outside the {self.component} engine's profile "
                f"[{self.min_batch}, {self.max_batch}]; use a batch size in that range or rebuild "
                f"with a profile whose {self.component}.batch_sizes include {n}")
        for spec, x in zip(self.inputs, xs):
            if tuple(x.shape[1:]) != tuple(spec.shape[1:]):
                raise EngineError(f"{self.path}: input {spec.name} must be N x "
                                  f"{' x '.join(map(str, spec.shape[1:]))}, got {tuple(x.shape)}")
        return n

    def __call__(self, *xs: torch.Tensor) -> list[torch.Tensor]:
        xs = [x.to(self.device, TORCH_DTYPES[s.dtype]).contiguous() for s, x in zip(self.inputs, xs)]
        self.check_batch(xs)
        return self.run(xs)

    def run(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        raise NotImplementedError


# ------------------------------------------------------------------ ONNX Runtime

def ort_providers(device: torch.device) -> list[str]:
    return (["CUDAExecutionProvider", "CPUExecutionProvider"] if device.type == "cuda"
            else ["CPUExecutionProvider"])


def ort_session(onnx_path: Path, device: torch.device):
    """A session on `device`; EngineError when the graph does not load or the device's
    provider did not take it."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if device.type == "cpu":
        so.intra_op_num_threads = torch.get_num_threads()
        if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
            # The same policy as torch's OpenMP threads: no spin-waiting on shared CPUs.
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ort_providers(device)
    if device.type == "cuda":
        providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    try:
        sess = ort.InferenceSession(str(onnx_path), so, providers=providers)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own types; name the file
        msg = str(exc).splitlines()[0][:300]
        raise EngineError(f"{onnx_path}: ONNX Runtime cannot load this graph ({msg}); the file is "
                          "corrupt or incomplete: rebuild with `rv2 build-engines`") from None
    want = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
    if want not in sess.get_providers():
        raise EngineError(f"{onnx_path}: ONNX Runtime did not run the graph on {want} (session "
                          f"providers: {sess.get_providers()}); install rv2[gpu] (onnxruntime-gpu) "
                          "matching this CUDA, or load the engines with device cpu")
    return sess


class OrtRunner(Runner):
    backend = "onnxruntime"

    def __init__(self, manifest: dict, folder: Path, device: torch.device):
        onnx_path = (folder / manifest["engine_file"]).resolve()
        super().__init__(manifest, onnx_path, device)
        self.session = ort_session(onnx_path, self.device)
        self.providers = self.session.get_providers()

    def run(self, xs):
        if self.device.type == "cuda":
            return self._run_bound(xs)
        feeds = {s.name: x.numpy() for s, x in zip(self.inputs, xs)}
        outs = self.session.run([s.name for s in self.outputs], feeds)
        return [torch.from_numpy(o) for o in outs]

    def _run_bound(self, xs):
        """CUDA: inputs and outputs stay in torch's device memory (I/O binding)."""
        import numpy as np

        n = xs[0].shape[0]
        binding = self.session.io_binding()
        idx = self.device.index or 0
        for s, x in zip(self.inputs, xs):
            binding.bind_input(s.name, "cuda", idx, np.dtype(s.dtype), list(x.shape), x.data_ptr())
        outs = [torch.empty(o.with_batch(n), dtype=TORCH_DTYPES[o.dtype], device=self.device)
                for o in self.outputs]
        for s, o in zip(self.outputs, outs):
            binding.bind_output(s.name, "cuda", idx, np.dtype(s.dtype), list(o.shape), o.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        return outs


# ------------------------------------------------------------------ AOTInductor

def _batch_dims(spec: GraphSpec, lo: int, hi: int, module):
    from torch.export import Dim

    if lo == hi:
        dims = tuple({} for _ in spec.inputs)
    else:
        b = Dim("batch", min=lo, max=hi)
        dims = tuple({0: b} for _ in spec.inputs)
    return (dims,) if _varargs(module) else dims


def _varargs(module) -> bool:
    import inspect

    return any(p.kind is inspect.Parameter.VAR_POSITIONAL
               for p in inspect.signature(module.forward).parameters.values())


def build_aoti(spec: GraphSpec, folder: Path, lo: int, hi: int, precision: str,
               device: torch.device) -> Path:
    """Compile `spec` into `folder/model.pt2` for batches in [lo, hi]."""
    module = in_precision(spec.module, precision).to(device).eval()
    # An example batch of 1 would specialise the batch dimension: use 2 where allowed.
    n = min(max(lo, 2), hi)
    example = tuple(x.to(device) for x in spec.example(n))
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / PACKAGE
    out.unlink(missing_ok=True)
    with torch.no_grad():
        ep = torch.export.export(module, example, dynamic_shapes=_batch_dims(spec, lo, hi, module))
        torch._inductor.aoti_compile_and_package(ep, package_path=str(out))
    return out


class AotiRunner(Runner):
    backend = "aotinductor"

    def __init__(self, manifest: dict, folder: Path, device: torch.device):
        path = folder / manifest["engine_file"]
        super().__init__(manifest, path, device)
        try:
            self.model = torch._inductor.aoti_load_package(str(path))
        except Exception as exc:  # noqa: BLE001 - a corrupt zip or .so: name the file
            msg = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            raise EngineError(f"{path}: cannot load this AOTInductor package ({msg}); rebuild with "
                              "`rv2 build-engines`") from None

    def run(self, xs):
        with torch.inference_mode():
            out = self.model(*xs)
        return list(out) if isinstance(out, (list, tuple)) else [out]


# ------------------------------------------------------------------ TensorRT

def build_trt(spec: GraphSpec, onnx_path: Path, folder: Path, lo: int, opt: int, hi: int,
              precision: str, workspace_gb: float = 8.0) -> Path:
    """A TensorRT plan from the ONNX graph, with one optimisation profile and a timing cache."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    flags = 0
    if major >= 11:  # precision comes from the (fp16) graph; no builder precision flags
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    elif major < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"{onnx_path}: TensorRT cannot parse this graph: {errors[:400]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if major < 11 and precision in ("fp16", "bf16"):
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for t in spec.inputs:
        profile.set_shape(t.name, t.with_batch(lo), t.with_batch(opt), t.with_batch(hi))
    config.add_optimization_profile(profile)
    folder.mkdir(parents=True, exist_ok=True)
    cache_file = folder / TIMING_CACHE
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f"{onnx_path}: TensorRT failed to build a plan for {spec.component} "
                          "(see the TensorRT log above)")
    out = folder / PLAN
    out.write_bytes(bytes(plan))
    cache_file.write_bytes(bytes(config.get_timing_cache().serialize()))
    return out


class TrtRunner(Runner):
    backend = "tensorrt"

    def __init__(self, manifest: dict, folder: Path, device: torch.device):
        import tensorrt as trt

        path = folder / manifest["engine_file"]
        super().__init__(manifest, path, device)
        if self.device.type != "cuda":
            raise EngineError(f"{path}: a TensorRT plan runs on a CUDA device; load with device cuda")
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        with torch.cuda.device(self.device):
            self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise EngineError(f"{path}: TensorRT cannot deserialise this plan (corrupt, or built by "
                              "another TensorRT); rebuild with `rv2 build-engines`")
        self.context = self.engine.create_execution_context()

    def run(self, xs):
        n = xs[0].shape[0]
        for s, x in zip(self.inputs, xs):
            self.context.set_input_shape(s.name, tuple(x.shape))
            self.context.set_tensor_address(s.name, x.data_ptr())
        outs = [torch.empty(o.with_batch(n), dtype=TORCH_DTYPES[o.dtype], device=self.device)
                for o in self.outputs]
        for s, o in zip(self.outputs, outs):
            self.context.set_tensor_address(s.name, o.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise EngineError(f"{self.path}: TensorRT execution failed")
        return outs


RUNNERS = {"onnxruntime": OrtRunner, "aotinductor": AotiRunner, "tensorrt": TrtRunner}


def open_runner(manifest: dict, folder: str | os.PathLike, device) -> Runner:
    return RUNNERS[manifest["backend"]](manifest, Path(folder), torch.device(device))


__all__ = ["Runner", "OrtRunner", "AotiRunner", "TrtRunner", "open_runner", "build_aoti",
           "build_trt", "ort_session", "tensorrt_missing", "PLAN", "PACKAGE", "TIMING_CACHE"]
