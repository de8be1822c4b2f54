"""The stages of QC'd generation, as ports any implementation can fill.

    prompts --TextEncoder--> context --Denoiser (in the sampler loop)--> latents
            --Decoder--> images --QCPredictor--> verdicts --Writer--> store

Implementations: the eager diffusers adapter (`rv2.generate.eager`) and the
compiled engines (`rv2.engines`). An executor (`rv2.generate.executor`) decides
which work items go through together; `StageRunner` runs one batch through
the stages and times each one.

Shapes, dtypes and devices (B images; C latent channels, h x w latent cells;
H x W pixels, H = h * decoder.scale_factor; D the text embedding width):

- TextEncoder.encode(prompts) -> B x 77 x D, the denoiser's dtype, on `device`.
  Prompts are tokenized to 77 CLIP tokens (padded, truncated).
- Denoiser.predict_noise(latents N x C x h x w, timesteps (N,) int64 or a 0-d
  tensor, context N x 77 x D) -> N x C x h x w noise prediction (epsilon), the
  latents' dtype, on `device`. With classifier-free guidance N = 2B (the empty
  prompt's rows first). One timestep per row lets batches mix rows at
  different steps (continuous batching).
- Decoder.decode(latents B x C x h x w, unscaled) -> B x 3 x H x W float32 in
  [0, 1], on `device` (NaN/inf possible in fp16; the runner rejects them).
- QCPredictor.predict(images B x 1 x H x W float32 in [0, 1]) -> numpy arrays
  {"p_female": (B,), "race_probs": (B, 3) over RACE_CLASSES, "age": (B,)}.
- Writer.write(records, images) -> records with `path` set; images[i] is a
  uint8 H x W (gray) or H x W x 3 array where records[i] passed QC, else None.
"""
from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from rv2._native import features, native_module, to_uint8
from rv2.generate.qc_rules import judge, unjudged
from rv2.generate.sampler import denoise, latents_for, to_gray

WorkItem = tuple[str, int]   # (prompt_id, attempt)
STAGE_NAMES = ("encode_text", "denoise", "decode", "qc", "write")


def images_to_uint8(images) -> np.ndarray:
    """B x c x H x W float images in [0, 1] -> uint8 numpy of the same shape (clamped,
    half to even, NaN -> 0). CUDA images go through rv2._C's postprocess kernel into a
    device buffer, copied to pinned host memory; others through the CPU kernel (or twin)."""
    import torch

    if images.is_cuda and features()["to_uint8_cuda"]:
        src = images.detach().to(torch.float32).contiguous()
        dst = torch.empty(src.shape, dtype=torch.uint8, device=src.device)
        stream = torch.cuda.current_stream(src.device)
        native_module().to_uint8_cuda(src.data_ptr(), dst.data_ptr(), src.numel(), stream.cuda_stream)
        host = torch.empty(src.shape, dtype=torch.uint8, pin_memory=True)
        host.copy_(dst, non_blocking=True)
        stream.synchronize()
        return host.numpy()
    return to_uint8(images.detach().to("cpu", torch.float32).numpy())


@runtime_checkable
class TextEncoder(Protocol):
    device: Any

    def encode(self, prompts: Sequence[str]) -> Any: ...


@runtime_checkable
class Denoiser(Protocol):
    device: Any
    dtype: Any
    in_channels: int       # latent channels C
    sample_size: int       # the model's native latent size (h = w)

    def predict_noise(self, latents: Any, timesteps: Any, context: Any) -> Any: ...


@runtime_checkable
class Decoder(Protocol):
    scale_factor: int      # pixels per latent cell

    def decode(self, latents: Any) -> Any: ...


@runtime_checkable
class QCPredictor(Protocol):
    model_id: str
    model_hash: str
    convention: str

    def predict(self, images: Any) -> dict: ...


@runtime_checkable
class Writer(Protocol):
    def write(self, records: Sequence[dict], images: Sequence[np.ndarray | None]) -> list[dict]: ...


@dataclass
class StageSet:
    """One implementation of each stage, plus the sampling algorithm (a diffusers
    scheduler: its state is copied per batch, never shared)."""

    text_encoder: TextEncoder
    denoiser: Denoiser
    decoder: Decoder
    scheduler: Any
    qc: QCPredictor | None = None   # None: every image passes, predictions recorded as missing


@dataclass
class SamplingPlan:
    """What every attempt shares: the sampler settings and the image geometry."""

    steps: int
    guidance: float
    base_seed: int
    latent_shape: tuple[int, int, int]
    age_tolerance: float = 16.0
    channels: str = "gray"          # gray | rgb, as the store keeps images
    early: Any = None               # EarlyRejectConfig with check points, or None (off)


@dataclass
class StageRunner:
    """Runs batches of work items through the stages, one timed method per stage.

    `base_records` maps prompt_id -> the prompt's manifest fields (prompt text,
    requested demographics, labels); `writer` is the store. `stages` is None in the
    driver of an executor whose workers build their own (`RemoteExecutor`)."""

    stages: StageSet | None
    writer: Writer
    plan: SamplingPlan
    base_records: dict
    on_step: Callable[[int], None] | None = None
    timings: dict = field(default_factory=lambda: collections.defaultdict(float))
    _uncond: Any = None
    _n_calls: int | None = None
    _early: Any = None

    @property
    def n_calls(self) -> int:
        """Denoiser calls of a full trajectory (PNDM: steps + 1)."""
        if self._n_calls is None:
            import copy

            sched = copy.deepcopy(self.stages.scheduler)
            sched.set_timesteps(self.plan.steps, device="cpu")
            self._n_calls = len(sched.timesteps)
        return self._n_calls

    @property
    def early(self):
        """The early rejector (`rv2.generate.early_reject`) when the plan has check points."""
        if self._early is None and self.plan.early is not None and self.plan.early.at:
            from rv2.generate.early_reject import EarlyRejector

            self._early = EarlyRejector(self.plan.early, self.n_calls, self.stages.decoder,
                                        self.stages.qc, self.stages.scheduler.alphas_cumprod,
                                        self.plan.age_tolerance, self.plan.channels)
        return self._early

    def _timed(self, name: str, t0: float) -> None:
        dev = getattr(self.stages.denoiser, "device", None)
        if getattr(dev, "type", None) == "cuda":   # kernels run async: charge them to their stage
            import torch

            # this thread's stream only: a pipeline executor's other stages keep running
            torch.cuda.current_stream(dev).synchronize()
        self.timings[name] += time.perf_counter() - t0

    def encode_text(self, items: Sequence[WorkItem]):
        """(cond B x 77 x D, uncond 1 x 77 x D or None)."""
        t0 = time.perf_counter()
        enc = self.stages.text_encoder
        cond = enc.encode([self.base_records[p]["prompt"] for p, _ in items])
        if self.plan.guidance > 1.0 and self._uncond is None:
            self._uncond = enc.encode([""])
        self._timed("encode_text", t0)
        return cond, (self._uncond if self.plan.guidance > 1.0 else None)

    def denoise(self, items: Sequence[WorkItem], cond, uncond):
        """Latents after the full trajectory, and each item's seed."""
        t0 = time.perf_counter()
        d = self.stages.denoiser
        lat, seeds = latents_for([p for p, _ in items], [a for _, a in items],
                                 self.plan.latent_shape, self.plan.base_seed, d.device, d.dtype)
        lat = denoise(d, self.stages.scheduler, cond, uncond, lat, self.plan.steps,
                      self.plan.guidance, self.on_step)
        self._timed("denoise", t0)
        return lat, seeds

    def decode(self, latents):
        t0 = time.perf_counter()
        images = self.stages.decoder.decode(latents)
        if self.plan.channels == "gray":
            images = to_gray(images)
        self._timed("decode", t0)
        return images

    def judge(self, items: Sequence[WorkItem], images) -> list[dict]:
        """QC verdicts; images with NaN/inf pixels (fp16 overflow) never pass."""
        import torch

        t0 = time.perf_counter()
        bases = [self.base_records[p] for p, _ in items]
        if self.stages.qc is None:
            verdicts = unjudged(len(items))
        else:
            pred = self.stages.qc.predict(to_gray(images))
            verdicts = judge(pred["p_female"], pred["race_probs"], pred["age"],
                             [b["sex"] for b in bases], [b["race"] for b in bases],
                             [b["age"] for b in bases], self.plan.age_tolerance)
        finite = torch.isfinite(images).flatten(1).all(dim=1).tolist()
        for v, ok in zip(verdicts, finite):
            v["qc_denoiser_calls"] = self.n_calls
            if not ok:
                v["qc_pass"] = False
                v["qc_fail_reasons"] = ";".join(x for x in (v["qc_fail_reasons"], "nonfinite") if x)
        self._timed("qc", t0)
        return verdicts

    def write(self, items: Sequence[WorkItem], seeds: Sequence[int], images,
              verdicts: Sequence[dict]) -> list[dict]:
        """uint8 images of the accepted attempts, then one journal record per attempt."""
        t0 = time.perf_counter()
        records, u8 = self.records_for(items, seeds, images, verdicts)
        out = self.writer.write(records, u8)
        self._timed("write", t0)
        return out

    def records_for(self, items: Sequence[WorkItem], seeds: Sequence[int], images,
                    verdicts: Sequence[dict]) -> tuple[list[dict], list]:
        """The journal records of finished attempts and the uint8 images of the accepted
        ones (None for the rest): what every executor hands its writer."""
        arr = images_to_uint8(images) if any(v["qc_pass"] for v in verdicts) else None
        records, u8 = [], []
        for i, ((pid, attempt), v) in enumerate(zip(items, verdicts)):
            records.append({**self.base_records[pid], "seed": seeds[i], "attempt": attempt, **v})
            if v["qc_pass"]:
                img = arr[i]
                img = img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))
                u8.append(np.ascontiguousarray(img))
            else:
                u8.append(None)
        return records, u8

    def add_time(self, stage: str, seconds: float) -> None:
        """Account time spent in `stage` by an executor that runs the stage bodies itself."""
        self.timings[stage] += seconds

    def process(self, items: Sequence[WorkItem]) -> list[dict]:
        """One batch through every stage; returns the written records. With early
        rejection, rows stopped at a check skip decode and QC: their verdict is the check's."""
        cond, uncond = self.encode_text(items)
        if self.early is None:
            latents, seeds = self.denoise(items, cond, uncond)
            images = self.decode(latents)
            verdicts = self.judge(items, images)
            return self.write(items, seeds, images, verdicts)
        import torch

        latents, seeds, stopped = self.denoise_checked(items, cond, uncond)
        n = len(items)
        run = [i for i in range(n) if i not in stopped]
        images = [stopped[i].image if i in stopped else None for i in range(n)]
        verdicts = [stopped[i].verdict if i in stopped else None for i in range(n)]
        if run:
            done = self.decode(latents[run])
            for j, (i, v) in enumerate(zip(run, self.judge([items[i] for i in run], done))):
                images[i], verdicts[i] = done[j:j + 1], v
        return self.write(items, seeds, torch.cat(images), verdicts)

    def denoise_checked(self, items: Sequence[WorkItem], cond, uncond):
        """`denoise` with early checks: (latents, seeds, {row: Check} of stopped rows)."""
        from rv2.generate.early_reject import denoise_checked

        t0 = time.perf_counter()
        d = self.stages.denoiser
        lat, seeds = latents_for([p for p, _ in items], [a for _, a in items],
                                 self.plan.latent_shape, self.plan.base_seed, d.device, d.dtype)
        lat, stopped = denoise_checked(d, self.stages.scheduler, cond, uncond, lat, self.plan.steps,
                                       self.plan.guidance, self.early,
                                       [self.base_records[p] for p, _ in items], self.on_step)
        self._timed("denoise", t0)
        return lat, seeds, stopped


__all__ = ["images_to_uint8", "TextEncoder", "Denoiser", "Decoder", "QCPredictor", "Writer", "StageSet",
           "SamplingPlan", "StageRunner", "WorkItem", "STAGE_NAMES"]
