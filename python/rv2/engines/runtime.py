"""`load(dir)`: built engines as the generation stages and the Predictor backend.

    engines = rv2.engines.load("engines/a100")          # checks every manifest first
    stages = engines.stages()                           # a StageSet for generate_dataset
    predictor = engines.predictor("runs/clf")           # rv2 predict's Predictor

The backend of each component is the one the build selected (engines.json),
never a guess; `backend=` picks another one that was built. Before anything is
deserialised, each manifest is checked against this machine (device, toolkit)
and each engine file against its recorded size and sha256.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rv2.classify import model_dir as md
from rv2.engines import manifest as mf
from rv2.engines.build import Sources
from rv2.engines.manifest import EngineError
from rv2.engines.profile import GENERATOR, QC
from rv2.generate.stages import StageSet
from rv2.models.sd import pndm_scheduler


def read_index(folder: str | os.PathLike) -> dict:
    folder = Path(folder)
    path = folder / mf.INDEX
    if not folder.is_dir():
        raise EngineError(f"engines folder not found: {folder} (build one with `rv2 build-engines`)")
    if not path.is_file():
        raise EngineError(f"{path}: missing; {folder} is not an engines folder (build one with "
                          "`rv2 build-engines`)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EngineError(f"{path}: not valid JSON ({exc}); rebuild with `rv2 build-engines`") from None


class EngineSet:
    """The engines of one folder; runners are opened (checked, deserialised) on first use."""

    def __init__(self, folder: Path, index: dict, device, backend: str | None = None):
        import torch

        self.folder, self.index, self.backend = Path(folder), index, backend
        self.device = torch.device(device)
        self._runners: dict[str, Any] = {}

    @property
    def components(self) -> list[str]:
        return [c for c, e in self.index["components"].items() if e.get("selected")]

    def engine_dir(self, component: str) -> Path:
        entry = self.index["components"].get(component)
        if not entry or not entry.get("selected"):
            raise EngineError(f"{self.folder}: no {component} engine was built; rebuild with "
                              f"{self.index.get('rebuild', 'rv2 build-engines')} and its model")
        backend = self.backend or entry["selected"]
        if backend not in entry["engines"]:
            raise EngineError(f"{self.folder}: no {backend} engine for {component} (built: "
                              f"{sorted(entry['engines'])}); rebuild with that backend in the profile")
        return self.folder / entry["engines"][backend]

    def manifest(self, component: str) -> dict:
        return mf.read_manifest(self.engine_dir(component))

    def runner(self, component: str):
        """The component's engine, after the manifest and file checks."""
        if component not in self._runners:
            from rv2.engines.backends import open_runner
            from rv2.export.onnx_export import check_onnx

            folder = self.engine_dir(component)
            m = mf.read_manifest(folder)
            mf.check_machine(m, folder / mf.MANIFEST, mf.machine_info(str(self.device)))
            if m.get("onnx") and m["backend"] == "onnxruntime":
                check_onnx((folder / m["engine_file"]).resolve())
            mf.check_files(m, folder)
            self._runners[component] = open_runner(m, folder, self.device)
        return self._runners[component]

    # ------------------------------------------------------------------ generation
    def stages(self, qc: bool = True) -> StageSet:
        missing = [c for c in GENERATOR if c not in self.components]
        if missing:
            raise EngineError(f"{self.folder}: no generator engines {missing}; build them with "
                              "`rv2 build-engines --generator MODEL_DIR`")
        gen = self.folder / "generator"
        meta = self.index["generator"]
        sched_dir = gen / "scheduler"
        if (sched_dir / "scheduler_config.json").is_file():
            from diffusers import PNDMScheduler

            scheduler = PNDMScheduler.from_pretrained(sched_dir)
        else:
            scheduler = pndm_scheduler()
        from transformers import CLIPTokenizer

        tok_dir = gen / "tokenizer"
        if not tok_dir.is_dir():
            raise EngineError(f"{tok_dir}: missing (the tokenizer is copied there at build time); "
                              "rebuild with `rv2 build-engines --generator MODEL_DIR`")
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
        return StageSet(text_encoder=EngineTextEncoder(tokenizer, self.runner("text_encoder"), self.device),
                        denoiser=EngineDenoiser(self.runner("unet"), self.device, meta),
                        decoder=EngineDecoder(self.runner("vae_decoder"), meta),
                        scheduler=scheduler, qc=self.qc() if qc and self.has_qc else None)

    def check_generator(self, model_dir: str | os.PathLike) -> None:
        """The generator folder a run names must be the one the engines were built from
        (its hash is the store's model identity)."""
        src = Sources(generator=Path(model_dir))
        for comp in GENERATOR:
            built = self.manifest(comp)["sources"]["files"]
            here = mf.sources_digest(src.files(comp))["files"]
            if built != here:
                raise EngineError(f"{self.engine_dir(comp)}: the {comp} engine was built from other "
                                  f"weights than {model_dir}; rebuild with `rv2 build-engines "
                                  f"--generator {model_dir}` or pass the generator it was built from")

    @property
    def has_qc(self) -> bool:
        return all(c in self.components for c in QC)

    def qc(self) -> "EngineQC":
        if not self.has_qc:
            raise EngineError(f"{self.folder}: no QC engines; build them with "
                              "`rv2 build-engines --qc-weights-dir DIR`")
        return EngineQC({c: self.runner(c) for c in QC}, self.index["qc"])

    # ------------------------------------------------------------------ classifier
    def classifier_backend(self) -> "EngineClassifierBackend":
        return EngineClassifierBackend(self.runner("classifier"), self.index["classifier"])

    def predictor(self, model_dir: str | os.PathLike):
        """rv2's Predictor over the classifier engine; the folder gives labels and
        thresholds, and must hold the weights the engine was built from."""
        from rv2.classify.predictor import Predictor

        p = md.check_model_dir(model_dir)
        built = self.manifest("classifier")["sources"]["files"]
        here = mf.sources_digest([p / md.WEIGHTS, p / md.MODEL_CONFIG])["files"]
        if built != here:
            raise EngineError(f"{self.engine_dir('classifier')}: the classifier engine was built from "
                              f"other weights than {p / md.WEIGHTS}; rebuild with `rv2 build-engines "
                              f"--classifier {p}`")
        return Predictor.load(p, backend=self.classifier_backend())


def load(folder: str | os.PathLike, device: str | None = None, backend: str | None = None,
         _index: dict | None = None) -> EngineSet:
    """The engines in `folder` (from `rv2 build-engines`), on `device` (default: the
    device they were built for)."""
    from rv2.models.device import resolve_device

    index = _index if _index is not None else read_index(folder)
    dev = resolve_device(device or index.get("device", "cpu"))
    return EngineSet(Path(folder), index, dev, backend)


# ------------------------------------------------------------------ stage adapters


class EngineTextEncoder:
    def __init__(self, tokenizer, runner, device):
        self.tokenizer, self.runner, self.device = tokenizer, runner, device

    def encode(self, prompts: Sequence[str]):
        tok = self.tokenizer
        ids = tok(list(prompts), padding="max_length", max_length=tok.model_max_length,
                  truncation=True, return_tensors="pt").input_ids
        return _chunked(self.runner, (ids,))[0]


class EngineDenoiser:
    """Engines take and give float32; the half precision lives inside the graph."""

    def __init__(self, runner, device, meta: dict):
        import torch

        self.runner, self.device, self.dtype = runner, device, torch.float32
        self.in_channels = int(meta["in_channels"])
        self.sample_size = int(meta["latent"][1])

    def predict_noise(self, latents, timesteps, context):
        import torch

        n = latents.shape[0]
        t = torch.as_tensor(timesteps, device=latents.device).float().reshape(-1)
        if t.numel() == 1:
            t = t.expand(n)
        return self.runner(latents, t, context)[0]


class EngineDecoder:
    def __init__(self, runner, meta: dict):
        self.runner = runner
        self.scale_factor = int(meta["scale_factor"])

    def decode(self, latents):
        return _chunked(self.runner, (latents,))[0]


class EngineQC:
    """The three QC engines as a `QCPredictor` (outputs as QCModels.predict gives them)."""

    def __init__(self, runners: dict, meta: dict):
        self.runners = runners
        self.model_id = f"engines:{meta['model_id']}"
        self.model_hash = meta["model_hash"]
        self.convention = meta["convention"]
        self.image_size = int(meta["image_size"])

    def predict(self, images) -> dict:
        import torch

        x = torch.as_tensor(images).float()
        if x.ndim != 4 or x.shape[1] != 1 or x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise EngineError(f"QC engines take B x 1 x {self.image_size} x {self.image_size} images "
                              f"(the size they were built for); got {tuple(x.shape)}")
        if x.shape[0] == 0:
            return {"p_female": np.zeros(0, np.float32), "race_probs": np.zeros((0, 3), np.float32),
                    "age": np.zeros(0, np.float32)}
        names = {"qc_sex": "p_female", "qc_race": "race_probs", "qc_age": "age"}
        return {names[c]: _chunked(r, (x,))[0].float().cpu().numpy() for c, r in self.runners.items()}


class EngineClassifierBackend:
    """The Predictor's `Backend` over a classifier engine. The engine folds the
    normalisation in (it takes pixels in [0, 1]); the Predictor's normalised batch is
    mapped back to pixels first. `logits_pixels` skips that round trip."""

    def __init__(self, runner, meta: dict):
        self.runner = runner
        self.name = f"engine:{runner.backend}"
        self.max_batch_size = runner.max_batch
        self.min_batch_size = runner.min_batch
        self.device = runner.device
        self.mean, self.std = float(meta["mean"]), float(meta["std"])

    def logits(self, x: np.ndarray) -> np.ndarray:
        pixels = x[:, :1] * np.float32(self.std) + np.float32(self.mean)
        return self.logits_pixels(pixels)

    def logits_pixels(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        return _chunked(self.runner, (torch.from_numpy(np.ascontiguousarray(pixels, np.float32)),))[0] \
            .float().cpu().numpy()


def _chunked(runner, xs):
    """Run in pieces of at most the engine's max batch (padding a short tail up to its
    min batch, which every engine here is exact under: rows are independent)."""
    import torch

    n = xs[0].shape[0]
    if runner.min_batch <= n <= runner.max_batch:
        return runner(*xs)
    parts = []
    for i in range(0, n, runner.max_batch):
        piece = [x[i:i + runner.max_batch] for x in xs]
        k = piece[0].shape[0]
        if k < runner.min_batch:
            piece = [torch.cat([p, p[-1:].expand(runner.min_batch - k, *p.shape[1:])]) for p in piece]
        parts.append([o[:k] for o in runner(*piece)])
    return [torch.cat(col) for col in zip(*parts)]


__all__ = ["load", "EngineSet", "EngineTextEncoder", "EngineDenoiser", "EngineDecoder", "EngineQC",
           "EngineClassifierBackend", "read_index"]
