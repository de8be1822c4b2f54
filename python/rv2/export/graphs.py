"""The exported graph of every component, with its preprocessing folded in.

Each `GraphSpec` holds a torch module whose inputs and outputs are what an
engine takes and gives (float32 or int64, batch first), the eager reference it
must match, the source weight files it came from and example inputs:

    text_encoder  input_ids  B x 77 int64           -> hidden    B x 77 x D
    unet          sample     N x C x h x w,
                  timestep   N float32 (one per row),
                  context    N x 77 x D             -> eps       N x C x h x w
    vae_decoder   latents    B x C x h x w (unscaled) -> images  B x 3 x H x W in [0, 1]
    qc_sex        images     B x 1 x H x W in [0, 1] -> p_female B
    qc_race       images                             -> race_probs B x 3
    qc_age        images                             -> age      B
    classifier    pixels     B x 1 x S x S in [0, 1] -> logits   B x L

Folded preprocessing: the VAE's latent scaling and [-1, 1] -> [0, 1] map; the
QC conventions (min-max or fixed mapping, 3 channels, antialiased resizes as
fixed matrices for the profile's image size, model scaling) and heads; the
classifier's normalisation and channel replication. Everything graph-side is
plain tensor algebra, so ONNX, AOTInductor and TensorRT all take it.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from rv2.classify import model_dir as md
from rv2.errors import UserError
from rv2.models.sd import check_model_dir, load_components

# Fixed prompts: the text encoder's example inputs and the end-to-end parity set.
PARITY_PROMPTS = (
    "45 year old WHITE female. No acute cardiopulmonary process.",
    "67 year old BLACK male. Small left pleural effusion.",
    "30 year old ASIAN female. Normal chest radiograph.",
    "82 year old WHITE male. Cardiomegaly with pulmonary edema.",
    "55 year old BLACK female. Right lower lobe opacity, pneumonia.",
    "71 year old ASIAN male. Pacemaker in place. No pneumothorax.",
    "",
    "38 year old WHITE male. Clear lungs.",
)


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One engine input or output; -1 marks the batch axis (always axis 0)."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"   # float32 | int64

    def with_batch(self, n: int) -> tuple[int, ...]:
        return (n, *self.shape[1:])

    def as_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclasses.dataclass
class GraphSpec:
    component: str
    module: nn.Module                      # graph over float32 / int64 tensors
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    reference: Callable[..., Sequence[torch.Tensor]]   # the eager path, same I/O
    sources: list[Path]                    # weight files the graph comes from
    make_inputs: Callable[[int, int], tuple[torch.Tensor, ...]]  # (batch, seed) -> inputs
    meta: dict = dataclasses.field(default_factory=dict)

    def example(self, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
        return self.make_inputs(batch, seed)


class _Cast(nn.Module):
    """Runs `inner` in `dtype` with float32 engine I/O (int inputs pass through)."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.inner, self.dtype = inner.to(dtype), dtype

    def forward(self, *xs):
        xs = [x.to(self.dtype) if x.is_floating_point() else x for x in xs]
        out = self.inner(*xs)
        if isinstance(out, (tuple, list)):
            return tuple(o.float() for o in out)
        return out.float()


def in_precision(module: nn.Module, precision: str) -> nn.Module:
    """The graph in fp32, fp16 or bf16 compute, keeping float32 I/O."""
    if precision == "fp32":
        return module.float()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    if dtype is None:
        raise UserError(f"unknown precision {precision!r}; use fp32, fp16 or bf16")
    import copy

    return _Cast(copy.deepcopy(module), dtype)


# ------------------------------------------------------------------ generator


class TextEncoderGraph(nn.Module):
    def __init__(self, text_encoder):
        super().__init__()
        self.model = text_encoder

    def forward(self, input_ids):
        return self.model(input_ids, return_dict=False)[0]


class UNetGraph(nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, context):
        return self.unet(sample, timestep, encoder_hidden_states=context, return_dict=False)[0]


class VAEDecoderGraph(nn.Module):
    """Unscaled latents -> images in [0, 1] (the eager decoder's arithmetic)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        self.scaling = float(vae.config.scaling_factor)

    def forward(self, latents):
        img = self.vae.decode(latents / self.scaling, return_dict=False)[0]
        return (img / 2 + 0.5).clamp(0, 1)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*") if p.suffix in (".safetensors", ".bin", ".json"))


def generator_graphs(model_dir: str | Path, components=None, batch: dict | None = None,
                     latent: Sequence[int] | None = None) -> dict[str, GraphSpec]:
    """Graphs of a diffusers generator folder: text encoder, UNet and VAE decoder.

    `latent` [C, h, w] is the UNet / VAE input size (default: the UNet's native size)."""
    model_dir = Path(model_dir)
    if components is None:
        _check_generator(model_dir)
        components = load_components(model_dir)
    tok, te, unet, vae = (components.tokenizer, components.text_encoder, components.unet,
                          components.vae)
    for m in (te, unet, vae):
        m.float().eval()
    if bool(getattr(te.config, "use_attention_mask", False)):
        raise UserError(f"{model_dir}/text_encoder: uses an attention mask; engines take token ids "
                        "only (as Stable Diffusion's CLIP does)")
    seq = int(tok.model_max_length)
    dim = int(te.config.hidden_size)
    c = int(unet.config.in_channels)
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    if latent is None:
        latent = (c, int(unet.config.sample_size), int(unet.config.sample_size))
    c_, h, w = (int(v) for v in latent)
    if c_ != c:
        raise UserError(f"profile latent has {c_} channels but {model_dir}/unet takes {c}; "
                        "fix the profile's unet.latent / vae_decoder.latent")
    if int(unet.config.cross_attention_dim) != dim:
        raise UserError(f"{model_dir}: text encoder width {dim} != UNet cross-attention width "
                        f"{unet.config.cross_attention_dim}")

    def ids(b, seed):
        prompts = [PARITY_PROMPTS[(seed + i) % len(PARITY_PROMPTS)] for i in range(b)]
        return (tok(prompts, padding="max_length", max_length=seq, truncation=True,
                    return_tensors="pt").input_ids,)

    def unet_in(b, seed):
        g = torch.Generator().manual_seed(seed)
        t = torch.linspace(980, 1, b).round() if b > 1 else torch.tensor([500.0])
        return (torch.randn(b, c, h, w, generator=g), t.float(),
                torch.randn(b, seq, dim, generator=g))

    def vae_in(b, seed):
        g = torch.Generator().manual_seed(seed)
        return (torch.randn(b, c, h, w, generator=g) * 0.8,)

    te_g, unet_g, vae_g = TextEncoderGraph(te), UNetGraph(unet), VAEDecoderGraph(vae)
    gen_meta = {"seq_len": seq, "hidden": dim, "in_channels": c, "sample_size": int(unet.config.sample_size),
                "latent": [c, h, w], "scale_factor": scale,
                "vae_scaling": float(vae.config.scaling_factor)}
    return {
        "text_encoder": GraphSpec(
            "text_encoder", te_g, [TensorSpec("input_ids", (-1, seq), "int64")],
            [TensorSpec("hidden", (-1, seq, dim))], te_g, _files(model_dir / "text_encoder"), ids,
            gen_meta),
        "unet": GraphSpec(
            "unet", unet_g,
            [TensorSpec("sample", (-1, c, h, w)), TensorSpec("timestep", (-1,)),
             TensorSpec("context", (-1, seq, dim))],
            [TensorSpec("eps", (-1, c, h, w))], unet_g, _files(model_dir / "unet"), unet_in,
            gen_meta),
        "vae_decoder": GraphSpec(
            "vae_decoder", vae_g, [TensorSpec("latents", (-1, c, h, w))],
            [TensorSpec("images", (-1, 3, h * scale, w * scale))], _eager_decoder(vae),
            _files(model_dir / "vae"), vae_in, gen_meta),
    }


def _check_generator(model_dir: Path) -> None:
    if model_dir.is_dir() and not (model_dir / "vae").is_dir():
        raise UserError(f"generator folder {model_dir} has no vae/ (the VAE decoder is one of the "
                        "engines); give a full diffusers folder (model_index.json, unet/, vae/, "
                        "text_encoder/, tokenizer/)")
    check_model_dir(model_dir)


def _eager_decoder(vae):
    from rv2.generate.eager import EagerDecoder

    dec = EagerDecoder(vae)
    return lambda latents: dec.decode(latents)


# ------------------------------------------------------------------ QC networks


def resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """n_out x n_in matrix R with R @ v == the antialiased bilinear resize of v (torch's
    `interpolate(antialias=True)` is separable, so an image resizes as R_h @ X @ R_w^T)."""
    eye = torch.eye(n_in, dtype=torch.float64).reshape(1, 1, n_in, n_in)
    # Resize along the rows only: column j of the result is the resize of the basis e_j.
    r = F.interpolate(eye, size=(n_out, n_in), mode="bilinear", align_corners=False, antialias=True)
    return r[0, 0].float()


class _MatrixResize(nn.Module):
    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.register_buffer("r", resize_matrix(n_in, n_out))

    def forward(self, x):  # B x C x n_in x n_in -> B x C x n_out x n_out
        return self.r @ x @ self.r.transpose(0, 1)


class QCGraph(nn.Module):
    """A QC wrapper (`rv2.models.qc_networks`) for images of one size, with its
    convention's preprocessing as graph ops and its head (softmax, P(female), years)."""

    def __init__(self, wrapper, image_size: int):
        super().__init__()
        self.wrapper = wrapper.float().eval()
        self.convention = wrapper.convention
        size = int(image_size)
        pre = wrapper.pre_size if self.convention == "authors" and wrapper.pre_size else size
        self.pre = _MatrixResize(size, pre) if pre != size else nn.Identity()
        self.resize = (_MatrixResize(pre, wrapper.input_size) if wrapper.input_size != pre
                       else nn.Identity())

    def forward(self, images):
        if self.convention == "xrv":
            u = images.clamp(0.0, 1.0)
        else:
            x = self.pre(images)
            lo = x.amin(dim=(1, 2, 3), keepdim=True)
            hi = x.amax(dim=(1, 2, 3), keepdim=True)
            u = (x - lo) / (hi - lo).clamp_min(1e-8)
        u = self.resize(u).expand(-1, 3, -1, -1)
        return self.wrapper.head(self.wrapper.net(self.wrapper._scale(u)))


QC_OUTPUTS = {"sex": TensorSpec("p_female", (-1,)), "race": TensorSpec("race_probs", (-1, 3)),
              "age": TensorSpec("age", (-1,))}


def qc_graphs(qc_models, image_size: int, sources: Sequence[Path] = ()) -> dict[str, GraphSpec]:
    """One graph per QC network of a `QCModels`, for square images of `image_size` pixels."""
    qc_models.to("cpu")
    size = int(image_size)

    def imgs(b, seed):
        g = torch.Generator().manual_seed(seed)
        # smooth, radiograph-like images: blurred noise plus a vertical gradient
        x = F.avg_pool2d(torch.rand(b, 1, size, size, generator=g), 5, 1, 2)
        return ((x + torch.linspace(0, 0.5, size).view(1, 1, size, 1)) / 1.5,)

    out = {}
    for kind in ("sex", "race", "age"):
        wrapper = getattr(qc_models, kind).float().eval()
        graph = QCGraph(wrapper, size)
        out[f"qc_{kind}"] = GraphSpec(
            f"qc_{kind}", graph, [TensorSpec("images", (-1, 1, size, size))], [QC_OUTPUTS[kind]],
            wrapper, list(sources), imgs,
            {"kind": kind, "convention": qc_models.convention, "model_id": qc_models.model_id,
             "model_hash": qc_models.model_hash, "image_size": size,
             "input_size": wrapper.input_size, "pre_size": wrapper.pre_size})
    return out


def qc_sources(qc_dir: str | Path | None) -> list[Path]:
    from rv2.models.qc_networks import BUNDLE_FILE, qc_weight_paths

    if qc_dir is not None and (Path(qc_dir) / BUNDLE_FILE).is_file():
        d = Path(qc_dir)
        return sorted([d / BUNDLE_FILE, *d.glob("*.safetensors")])
    return sorted(qc_weight_paths([qc_dir] if qc_dir else []).values())


# ------------------------------------------------------------------ classifier


class ClassifierGraph(nn.Module):
    """Pixels B x 1 x S x S in [0, 1] -> logits: (x - mean) / std, replicated to the
    network's channels, then the network."""

    def __init__(self, model, mean: float, std: float, channels: int):
        super().__init__()
        self.model = model.float().eval()
        self.mean, self.std, self.channels = float(mean), float(std), int(channels)

    def forward(self, pixels):
        x = (pixels - self.mean) / self.std
        return self.model(x.expand(-1, self.channels, -1, -1))


def classifier_graph(model_dir: str | Path, image_size: int | None = None) -> GraphSpec:
    """The disease classifier of a `rv2 train-classifier` folder."""
    from rv2.classify.predictor import Preprocessing

    model, mcfg, thr = md.load_model(model_dir, "cpu")
    pre = Preprocessing.from_model_config(mcfg)
    s = pre.image_size
    if image_size is not None and int(image_size) != s:
        raise UserError(f"the profile's classifier image size {image_size} differs from {model_dir}'s "
                        f"image_size {s}; set classifier.image to [1, {s}, {s}] in the profile")
    graph = ClassifierGraph(model, pre.mean, pre.std, pre.channels)
    n = len(mcfg["labels"])

    def pixels(b, seed):
        g = torch.Generator().manual_seed(seed)
        return (torch.rand(b, 1, s, s, generator=g),)

    def reference(p):  # what the Predictor feeds the eager network
        x = (p - pre.mean) / pre.std
        return model(x.expand(-1, pre.channels, -1, -1))

    return GraphSpec("classifier", graph, [TensorSpec("pixels", (-1, 1, s, s))],
                     [TensorSpec("logits", (-1, n))], reference,
                     [Path(model_dir) / md.WEIGHTS, Path(model_dir) / md.MODEL_CONFIG], pixels,
                     {"labels": list(mcfg["labels"]), "image_size": s, "mean": pre.mean,
                      "std": pre.std, "channels": pre.channels})


@torch.inference_mode()
def run_reference(spec: GraphSpec, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out: Any = spec.reference(*inputs)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    return [o.float() for o in outs]


__all__ = ["TensorSpec", "GraphSpec", "generator_graphs", "qc_graphs", "qc_sources",
           "classifier_graph", "resize_matrix", "QCGraph", "ClassifierGraph", "in_precision",
           "run_reference", "PARITY_PROMPTS"]
