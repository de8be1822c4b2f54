"""What the HTTP and gRPC front ends share: admission, auth, decoding, batching, metrics.

Everything here runs on the server's event loop except decoding (a small thread
pool) and the backend call (the batcher's thread), so the loop only parses,
checks and copies. Admission is counted from the moment a request's headers
arrive (HTTP) or its RPC starts (gRPC), so bodies waiting to be read count
against the bound too, and memory stays bounded under any load.
"""
from __future__ import annotations

import asyncio
import hmac
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from rv2 import __version__
from rv2.data.dali import DaliDecoder, dali_available
from rv2.data.imageio import ImageReadError
from rv2.errors import UserError
from rv2.serve.batcher import Batcher
from rv2.serve.metrics import Metrics
from rv2.serve.protocol import (
    BYTES_INPUT,
    InferRequest,
    OutputTensor,
    RequestError,
    ServedModel,
)

# Chest radiographs reach about 4300 x 4300 and mammograms 4096 x 5120.
DEFAULT_MAX_PIXELS = 6000 * 6000


@dataclass
class ServeSettings:
    """`rv2 serve`'s knobs; the batching ones carry Triton's names."""

    model_name: str = "classifier"
    host: str = "127.0.0.1"
    http_port: int = 8000            # 0: any free port; -1: no HTTP
    grpc_port: int = 8001            # 0: any free port; -1: no gRPC
    max_batch_size: int | None = None  # default: the backend's maximum, else 32
    preferred_batch_size: tuple[int, ...] = ()
    max_queue_delay_microseconds: int = 0
    tune_batch_size: bool = False    # at start, prefer the batch size with the best rows/s
    instances: int = 1               # compute threads taking batches (Triton's instance count)
    max_queue_size: int = 64         # requests waiting for the backend
    request_timeout_s: float = 30.0  # deadline in the queue; a request's `timeout` may shorten it
    max_body_bytes: int = 64 << 20
    max_pixels: int = DEFAULT_MAX_PIXELS
    token: str | None = None         # bearer token; None: no auth
    decode_threads: int = 2
    decoder: str = "pil"             # "dali": NVIDIA DALI for PNG/JPEG (mixed on the GPU)
    keepalive_s: float = 75.0        # idle HTTP connections are closed after this
    shutdown_grace_s: float = 30.0

    def batching(self) -> dict:
        """Triton's `dynamic_batching` block."""
        d = {"max_queue_delay_microseconds": self.max_queue_delay_microseconds,
             "default_queue_policy": {"max_queue_size": self.max_queue_size,
                                      "default_timeout_microseconds": int(self.request_timeout_s * 1e6),
                                      "allow_timeout_override": True}}
        if self.preferred_batch_size:
            d["preferred_batch_size"] = list(self.preferred_batch_size)
        return d

    def public(self) -> dict:
        d = asdict(self)
        d["token"] = "<set>" if self.token else None
        return d


def time_batch_sizes(run, x: np.ndarray, max_batch_size: int, repeats: int = 2) -> dict[int, float]:
    """Seconds per row of `run` at batch 1, 2, 4, ... up to `max_batch_size` (the best
    of `repeats` runs after a warm one)."""
    sizes, b = [], 1
    while b < max_batch_size:
        sizes.append(b)
        b *= 2
    sizes.append(max_batch_size)
    out = {}
    for b in sizes:
        xb = np.repeat(x[:1], b, axis=0)
        run(xb)
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            run(xb)
            best = min(best, time.perf_counter() - t)
        out[b] = best / b
    return out


def best_batch_size(per_row: dict[int, float], margin: float = 0.1) -> int:
    """The smallest batch size within `margin` of the best time per row: a larger
    batch has to pay for the latency it adds. On a CPU whose caches a batch of one
    fills, that is 1 and batching is off; on a GPU, the largest."""
    best = min(per_row.values())
    return min(b for b, t in per_row.items() if t <= best * (1 + margin))


def default_threads() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class InferenceService:
    def __init__(self, predictor, settings: ServeSettings):
        cap = predictor.backend.max_batch_size
        mbs = settings.max_batch_size or cap or 32
        if cap and mbs > cap:
            raise UserError(f"--max-batch-size {mbs} exceeds the {predictor.backend.name} "
                            f"backend's maximum batch {cap}")
        if settings.instances < 1:
            raise UserError(f"--instances must be at least 1, got {settings.instances}")
        self.settings = settings
        self.predictor = predictor
        self.model = ServedModel(predictor, settings.model_name, mbs)
        self.metrics = Metrics(settings.model_name)
        self.batcher: Batcher | None = None
        self.decode_pool = ThreadPoolExecutor(max(1, settings.decode_threads), "rv2-decode")
        # requests admitted and not finished: queued, decoding, or with a body being read
        self.limit = settings.max_queue_size + mbs * settings.instances
        self.active = 0
        self.ready = False
        self.preferred_batch_size: tuple[int, ...] = settings.preferred_batch_size
        self.batch_timings: dict[int, float] = {}  # seconds per row by batch size, when tuned
        self.draining = False
        self._token = settings.token.encode() if settings.token else None
        if settings.decoder not in ("pil", "dali"):
            raise UserError(f"decoder must be 'pil' or 'dali', got {settings.decoder!r}")
        if settings.decoder == "dali" and not dali_available():
            raise UserError("--decoder dali needs NVIDIA DALI: pip install 'rv2[dali]'")
        self._dali: DaliDecoder | None = None
        self._dali_lock = threading.Lock()  # one DALI pipeline, fed by one thread at a time
        self.metrics.pending = lambda: self.batcher.pending() if self.batcher else 0
        self.metrics.ready = lambda: self.is_ready()

    # ------------------------------------------------------------------ life
    def start(self) -> None:
        """Warm the backend (ready means warm), then start batching."""
        pre = self.predictor.preprocessing
        if self.settings.decoder == "dali":
            dev = getattr(self.predictor.backend, "device", None)
            gpu = getattr(dev, "type", None) == "cuda"
            self._dali = DaliDecoder(pre.image_size, square="crop",
                                     device_id=(dev.index or 0) if gpu else None,
                                     batch_size=self.model.max_batch_size,
                                     num_threads=max(1, self.settings.decode_threads),
                                     max_pixels=self.settings.max_pixels)
        x = np.zeros((1, pre.channels, pre.image_size, pre.image_size), np.float32)
        self.predictor.predict_tensor(x)
        s = self.settings
        preferred = s.preferred_batch_size
        if s.tune_batch_size:
            self.batch_timings = time_batch_sizes(self.predictor.predict_tensor, x, self.model.max_batch_size)
            preferred = (best_batch_size(self.batch_timings),)
        self.preferred_batch_size = tuple(preferred)
        self.batcher = Batcher(self.predictor.predict_tensor, max_batch_size=self.model.max_batch_size,
                               max_queue_delay_microseconds=s.max_queue_delay_microseconds,
                               preferred_batch_size=preferred, instances=s.instances,
                               max_queue_size=s.max_queue_size, on_batch=self.metrics.batch_done,
                               name=s.model_name)
        self.ready = True

    def is_ready(self) -> bool:
        return self.ready and not self.draining

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.decode_pool.shutdown(wait=True)

    # ------------------------------------------------------------------ admission
    @property
    def token_required(self) -> bool:
        return self._token is not None

    def authorized(self, header: str | None) -> bool:
        if self._token is None:
            return True
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[7:].strip().encode(), self._token)

    def admit(self) -> None:
        if self.draining:
            raise RequestError("server is shutting down", 503, retry_after=1, reason="REJECTED")
        if not self.ready:
            raise RequestError("model is not ready yet", 503, retry_after=1, reason="REJECTED")
        if self.active >= self.limit:
            self.metrics.request_done(0.0, ok=False, reason="REJECTED")
            raise RequestError(f"server busy: {self.active} requests in progress (limit "
                               f"{self.limit}); retry later", 503, retry_after=1, reason="REJECTED")
        self.active += 1

    def release(self) -> None:
        self.active -= 1

    # ------------------------------------------------------------------ inference
    async def infer(self, req: InferRequest) -> list[OutputTensor]:
        """Outputs of an admitted, routed request; RequestError if it fails."""
        t0 = time.monotonic()
        try:
            kind, payload = self.model.parse_input(req)
            timeout = self.settings.request_timeout_s
            if req.timeout_us:
                timeout = min(timeout, req.timeout_us / 1e6)
            deadline = t0 + timeout
            if kind == "bytes":
                loop = asyncio.get_running_loop()
                payload = await loop.run_in_executor(self.decode_pool, self._prepare, payload)
            res = await self.batcher.submit(payload, deadline)
            outs = self.model.outputs(req, res.probs)
        except RequestError as exc:
            self.metrics.request_done(time.monotonic() - t0, ok=False, reason=exc.reason)
            raise
        except asyncio.CancelledError:
            self.metrics.request_done(time.monotonic() - t0, ok=False, reason="CANCELED")
            raise
        self.metrics.request_done(time.monotonic() - t0, queue_s=res.queue_s, compute_s=res.compute_s)
        return outs

    def _prepare(self, blobs: list[bytes]) -> np.ndarray:
        p = self.predictor
        if self._dali is not None:  # DALI crops and resizes; the Predictor normalises
            try:
                with self._dali_lock:
                    pixels = self._dali.decode_files(blobs)
            except ImageReadError as exc:
                raise RequestError(str(exc)) from None
            return p.preprocessing.batch(pixels)
        try:
            images = [p.decode(b, f"{BYTES_INPUT}[{i}]", max_pixels=self.settings.max_pixels)
                      for i, b in enumerate(blobs)]
        except ImageReadError as exc:
            raise RequestError(str(exc)) from None
        return p.prepare(images)

    # ------------------------------------------------------------------ metadata
    def server_metadata(self) -> dict:
        return {"name": "rv2", "version": __version__,
                "extensions": ["classification", "binary_tensor_data", "model_configuration"]}

    def model_config(self) -> dict:
        batching = self.settings.batching()
        if self.preferred_batch_size:  # tuned at start: the sizes in use
            batching["preferred_batch_size"] = list(self.preferred_batch_size)
        cfg = self.model.config(batching)
        cfg["instance_group"] = [{"count": self.settings.instances}]
        return cfg


__all__ = ["InferenceService", "ServeSettings", "best_batch_size", "default_threads", "time_batch_sizes"]
