"""QC classifiers (sex, race, age): wrappers that own the preprocessing, loaders
for the published weight files, and rv2's "QC bundle" folder for small stand-ins.

Every wrapper takes decoded generations, B x 1 x H x W floats in [0, 1], and
returns what the QC rule needs:

* `SexModel(net)`  -> P(female), shape (B,). `net`: 2 logits, Male=0, Female=1
  (chexploration ResNet-34). Input: 3 channels of raw 0-255 intensities.
* `RaceModel(net)` -> probabilities over RACE_CLASSES, shape (B, 3). `net`
  returns logits or log-probabilities (softmax of either is the same).
  Input: 3 channels, `(x + 1024) / 2048` then ImageNet mean/std.
* `AgeModel(net)`  -> years, shape (B,). Same input as race.

Two preprocessing conventions (a setting, "authors" by default):
* "authors": resize to `pre_size` (224, as the authors' QC script does), then
  per-image min-max (to [0, 255] for sex, to [-1024, 1024] for race/age);
* "xrv": torchxrayvision's fixed mapping, pixel p in [0, 1] -> (2p - 1) * 1024
  (so sex sees p * 255), no per-image scaling.
Both then repeat to 3 channels and resize (bilinear, antialiased, as
torchxrayvision does) to the net's input size (224 sex, 320 race/age for the
real models; a bundle may set smaller sizes).

Weights: `load_qc_models(dir)` reads either a QC bundle (`qc_bundle.json`) or
the real files (names in `rv2.weights`): race = DataParallel state dict
(`module.` keys) into torchvision resnet34 with 3 outputs; sex = Lightning
checkpoint (`state_dict`, `model.` keys) into resnet34 with 2 outputs;
age = TorchScript.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from rv2.errors import UserError
from rv2.files import atomic_write_text
from rv2.weights import find_weights, locate

log = logging.getLogger("rv2.models.qc_networks")

CONVENTIONS = ("authors", "xrv")
RACE_CLASSES: tuple[str, ...] = ("Asian", "Black", "White")
SEX_CLASSES: tuple[str, ...] = ("M", "F")  # index 0 = Male, 1 = Female
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BUNDLE_FILE = "qc_bundle.json"
BUNDLE_FORMAT = "rv2-qc-bundle"
BUNDLE_VERSION = 1
DEFAULT_SIZES = {"sex": 224, "race": 320, "age": 320}
AUTHORS_PRE_SIZE = 224


class QCWeightsError(UserError):
    """A QC weight file or bundle that exists but cannot be used."""


# ------------------------------------------------------------------ preprocessing

def _resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if not size or (x.shape[-2] == size and x.shape[-1] == size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True)


def _check_images(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 1:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise UserError(f"QC models take images shaped B x 1 x H x W in [0, 1]; got {shape}")
    if x.shape[-1] != x.shape[-2]:
        raise UserError(f"QC models take square images; got {x.shape[-2]}x{x.shape[-1]} "
                         "(center-crop first)")
    return x.float()


def unit_range(x: torch.Tensor, convention: str, pre_size: int | None) -> torch.Tensor:
    """Images in [0, 1] as each convention sees them before model-specific scaling."""
    if convention not in CONVENTIONS:
        raise UserError(f"unknown QC preprocessing convention {convention!r}; "
                         f"use one of {CONVENTIONS}")
    x = _check_images(x)
    if convention == "xrv":
        return x.clamp(0.0, 1.0)
    x = _resize(x, pre_size)
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    # A constant image has no range: map it to 0 rather than dividing by zero.
    return (x - lo) / (hi - lo).clamp_min(1e-8)


class _QCWrapper(nn.Module):
    kind = ""

    def __init__(self, net: nn.Module, convention: str = "authors", input_size: int | None = None,
                 pre_size: int | None = AUTHORS_PRE_SIZE):
        super().__init__()
        if convention not in CONVENTIONS:
            raise UserError(f"unknown QC preprocessing convention {convention!r}; "
                             f"use one of {CONVENTIONS}")
        self.net = net
        self.convention = convention
        self.input_size = int(input_size or DEFAULT_SIZES[self.kind])
        self.pre_size = pre_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        u = unit_range(x, self.convention, self.pre_size)
        u = _resize(u.expand(-1, 3, -1, -1), self.input_size)
        return self._scale(u)

    def _scale(self, u: torch.Tensor) -> torch.Tensor:  # race / age: ImageNet normalisation
        return (u - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(self.preprocess(x)))

    def head(self, out: torch.Tensor) -> torch.Tensor:
        """The net's raw output -> what the QC rule reads (per model kind)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"convention={self.convention}, input_size={self.input_size}, pre_size={self.pre_size}"


class SexModel(_QCWrapper):
    """P(female) of images B x 1 x H x W in [0, 1]."""

    kind = "sex"

    def _scale(self, u):
        return u * 255.0

    def head(self, out: torch.Tensor) -> torch.Tensor:
        if out.ndim != 2 or out.shape[1] != 2:
            raise QCWeightsError(f"sex net must return B x 2 (Male, Female); got {tuple(out.shape)}")
        return out.float().softmax(dim=1)[:, 1]


class RaceModel(_QCWrapper):
    """Probabilities over RACE_CLASSES (Asian, Black, White), shape B x 3."""

    kind = "race"

    def head(self, out: torch.Tensor) -> torch.Tensor:
        if out.ndim != 2 or out.shape[1] != len(RACE_CLASSES):
            raise QCWeightsError(f"race net must return B x 3 (Asian, Black, White); "
                                 f"got {tuple(out.shape)}")
        return out.float().softmax(dim=1)


class AgeModel(_QCWrapper):
    """Predicted age in years, shape B."""

    kind = "age"

    def head(self, out: torch.Tensor) -> torch.Tensor:
        if out.ndim == 2 and out.shape[1] == 1:
            out = out[:, 0]
        if out.ndim != 1:
            raise QCWeightsError(f"age net must return B or B x 1 years; got {tuple(out.shape)}")
        return out.float()


WRAPPERS = {"sex": SexModel, "race": RaceModel, "age": AgeModel}
N_OUT = {"sex": 2, "race": 3, "age": 1}


# ------------------------------------------------------------------ architectures

class SmallCNN(nn.Module):
    """A small conv net for stand-in QC models (demo, tests): conv-BN-ReLU blocks
    with stride 2, global average pooling and a linear head."""

    def __init__(self, in_ch: int = 3, width: int = 16, n_out: int = 2, depth: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_ch
        for i in range(depth):
            w = width * (2 ** i)
            layers += [nn.Conv2d(c, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w),
                       nn.ReLU(inplace=True)]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, n_out)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def _resnet34(n_out: int, log_softmax: bool = False) -> nn.Module:
    import torchvision

    net = torchvision.models.resnet34(weights=None)
    head = nn.Linear(512, n_out)
    net.fc = nn.Sequential(head, nn.LogSoftmax(dim=1)) if log_softmax else head
    return net


# name -> factory(**kwargs); a bundle's spec names one of these.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "SmallCNN": SmallCNN,
    "resnet34": _resnet34,
}


def build_net(arch: str, **kwargs) -> nn.Module:
    if arch not in ARCHITECTURES:
        raise QCWeightsError(f"unknown QC architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**kwargs)


# ------------------------------------------------------------------ the bundle of three

@dataclasses.dataclass
class QCModels:
    """The three QC models, built once per process; `predict` runs them batched."""

    sex: SexModel
    race: RaceModel
    age: AgeModel
    model_id: str = ""       # where they came from (bundle path or weight files)
    model_hash: str = ""     # sha256 over the weight files (short)
    device: str = "cpu"
    batch_size: int = 64

    def to(self, device) -> "QCModels":
        for m in (self.sex, self.race, self.age):
            m.to(device)
        self.device = str(device)
        return self

    @property
    def convention(self) -> str:
        return self.sex.convention

    def set_convention(self, convention: str) -> "QCModels":
        if convention not in CONVENTIONS:
            raise UserError(f"unknown QC preprocessing convention {convention!r}; "
                             f"use one of {CONVENTIONS}")
        for m in (self.sex, self.race, self.age):
            m.convention = convention
        return self

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        """images B x 1 x H x W in [0, 1] -> p_female (B,), race_probs (B, 3), age (B,)."""
        images = _check_images(images)
        outs: dict[str, list] = {"p_female": [], "race_probs": [], "age": []}
        for i in range(0, images.shape[0], max(1, self.batch_size)):
            x = images[i:i + self.batch_size].to(self.device, non_blocking=True)
            outs["p_female"].append(self.sex(x).cpu())
            outs["race_probs"].append(self.race(x).cpu())
            outs["age"].append(self.age(x).cpu())
        if images.shape[0] == 0:
            return {"p_female": np.zeros(0, np.float32), "race_probs": np.zeros((0, 3), np.float32),
                    "age": np.zeros(0, np.float32)}
        return {k: torch.cat(v).numpy().astype(np.float32) for k, v in outs.items()}


def _short_hash(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda q: q.name):
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()[:16]


# ------------------------------------------------------------------ bundle format

def save_qc_bundle(out_dir: str | os.PathLike, sex_net: nn.Module, race_net: nn.Module,
                   age_net: nn.Module, spec: dict[str, Any]) -> Path:
    """Save three stand-in nets as an rv2 QC bundle.

    `spec` gives, per model ("sex", "race", "age"), {"arch": name in ARCHITECTURES,
    "kwargs": {...}, "input_size": int}; optional top-level "convention"
    ("authors"/"xrv") and "pre_size" (int or None: the authors' resize before
    min-max). Example: {"sex": {"arch": "SmallCNN", "kwargs": {"in_ch": 3,
    "width": 8, "n_out": 2}, "input_size": 64}, ..., "pre_size": None}.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    convention = spec.get("convention", "authors")
    if convention not in CONVENTIONS:
        raise UserError(f"spec convention {convention!r} must be one of {CONVENTIONS}")
    doc: dict[str, Any] = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION,
                           "convention": convention, "pre_size": spec.get("pre_size"),
                           "race_classes": list(RACE_CLASSES), "sex_classes": ["Male", "Female"],
                           "models": {}}
    for kind, net in (("sex", sex_net), ("race", race_net), ("age", age_net)):
        if kind not in spec:
            raise UserError(f"spec has no entry for the {kind} model; give arch, kwargs, input_size")
        s = spec[kind]
        arch = s.get("arch")
        if arch not in ARCHITECTURES:
            raise UserError(f"spec[{kind!r}].arch {arch!r} is not a known architecture "
                             f"{sorted(ARCHITECTURES)}")
        fname = f"{kind}.safetensors"
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        save_file(state, str(out / fname))
        doc["models"][kind] = {"arch": arch, "kwargs": dict(s.get("kwargs", {})),
                               "input_size": int(s.get("input_size", DEFAULT_SIZES[kind])),
                               "file": fname}
    atomic_write_text(out / BUNDLE_FILE, json.dumps(doc, indent=2))
    return out


def _load_bundle(bundle: Path, convention: str | None) -> QCModels:
    from safetensors.torch import load_file

    try:
        doc = json.loads((bundle / BUNDLE_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise QCWeightsError(f"{bundle / BUNDLE_FILE}: not valid JSON ({exc})") from exc
    if doc.get("format") != BUNDLE_FORMAT:
        raise QCWeightsError(f"{bundle / BUNDLE_FILE}: format is {doc.get('format')!r}, "
                             f"expected {BUNDLE_FORMAT!r}")
    if int(doc.get("version", 0)) > BUNDLE_VERSION:
        raise QCWeightsError(f"{bundle / BUNDLE_FILE}: bundle version {doc.get('version')} is newer "
                             "than this rv2 reads; upgrade rv2")
    conv = convention or doc.get("convention", "authors")
    wrappers = {}
    files = [bundle / BUNDLE_FILE]
    for kind in ("sex", "race", "age"):
        s = (doc.get("models") or {}).get(kind)
        if not s:
            raise QCWeightsError(f"{bundle / BUNDLE_FILE}: no '{kind}' model in the bundle")
        f = bundle / s["file"]
        if not f.is_file():
            raise QCWeightsError(f"QC bundle {bundle}: missing weight file {f.name} for the {kind} model")
        net = build_net(s["arch"], **s.get("kwargs", {}))
        try:
            net.load_state_dict(load_file(str(f)))
        except RuntimeError as exc:
            raise QCWeightsError(f"{f}: weights do not fit {s['arch']}({s.get('kwargs')}): {exc}") from exc
        wrappers[kind] = WRAPPERS[kind](net.eval(), convention=conv, input_size=s["input_size"],
                                        pre_size=doc.get("pre_size"))
        files.append(f)
    return QCModels(**wrappers, model_id=f"bundle:{bundle.name}", model_hash=_short_hash(files))


# ------------------------------------------------------------------ real weight files

def _torch_load(path: Path, what: str):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickles with extra objects (Lightning hparams)
        if isinstance(exc, (FileNotFoundError, IsADirectoryError)):
            raise
        log.warning("%s: not loadable with weights_only=True (%s); loading the full pickle "
                    "because it is the user-placed QC weight file", path, exc)
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:  # noqa: BLE001
            raise QCWeightsError(f"{path}: cannot read the {what} ({exc2})") from exc2


def _strip(state: dict, prefix: str) -> dict:
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def load_race_net(path: str | os.PathLike) -> nn.Module:
    """torchxrayvision's emory_hiti race ResNet-34 from its DataParallel state dict."""
    path = Path(path)
    state = _torch_load(path, "race model state dict")
    if not isinstance(state, dict):
        raise QCWeightsError(f"{path}: expected a state dict (DataParallel, 'module.' keys), "
                             f"got {type(state).__name__}")
    state = _strip(state, "module.")
    log_softmax = "fc.0.weight" in state
    return _loaded(_resnet34(3, log_softmax=log_softmax), state, path, "3-class ResNet-34 race model")


def load_sex_net(path: str | os.PathLike) -> nn.Module:
    """The chexploration sex ResNet-34 from its Lightning checkpoint."""
    path = Path(path)
    ckpt = _torch_load(path, "sex model checkpoint")
    if not isinstance(ckpt, dict):
        raise QCWeightsError(f"{path}: expected a Lightning checkpoint dict, got {type(ckpt).__name__}")
    state = ckpt.get("state_dict", ckpt)
    state = _strip(state, "model.")
    return _loaded(_resnet34(2), state, path, "2-class ResNet-34 sex model")


def _loaded(net: nn.Module, state: dict, path: Path, what: str) -> nn.Module:
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise QCWeightsError(f"{path}: not a {what}: {exc}") from exc
    return net.eval()


def load_age_net(path: str | os.PathLike) -> nn.Module:
    """The riken age model (TorchScript)."""
    path = Path(path)
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:  # noqa: BLE001
        raise QCWeightsError(f"{path}: not a TorchScript age model ({exc})") from exc


def qc_weight_paths(dirs: Sequence[str | os.PathLike | None] = ()) -> dict[str, Path]:
    """Paths of the real QC files: race, age and sex (the chexploration file, else
    torchxrayvision's copy); one MissingWeightsError naming all that is missing."""

    # Prefer the chexploration file; torchxrayvision's copy is the same model.
    sex_key = "sex_xrv" if locate("sex_xrv", dirs) and not locate("sex", dirs) else "sex"
    found = find_weights([sex_key, "race", "age"], dirs)
    found["sex"] = found.pop(sex_key)
    return found


def load_qc_models(path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                   convention: str | None = None, batch_size: int = 64) -> QCModels:
    """The three QC models from a bundle folder (`qc_bundle.json`) or from the real
    weight files in `path` (then RV2_WEIGHTS_DIR, ~/.cache/rv2/weights,
    ~/.torchxrayvision/models_data). `convention` overrides the bundle's; the
    real files default to "authors"."""
    if path is not None and (Path(path).expanduser() / BUNDLE_FILE).is_file():
        qc = _load_bundle(Path(path).expanduser(), convention)
    else:
        paths = qc_weight_paths([path] if path is not None else [])
        conv = convention or "authors"
        qc = QCModels(sex=SexModel(load_sex_net(paths["sex"]), conv),
                      race=RaceModel(load_race_net(paths["race"]), conv),
                      age=AgeModel(load_age_net(paths["age"]), conv),
                      model_id="files:" + ",".join(p.name for p in paths.values()),
                      model_hash=_short_hash(list(paths.values())))
    qc.batch_size = batch_size
    return qc.to(device)


def stand_in_qc_models(seed: int = 0, input_size: int = 32, width: int = 4,
                       convention: str = "authors") -> QCModels:
    """Random-weight SmallCNN QC models (tests, benchmarks)."""
    torch.manual_seed(seed)
    nets = {k: SmallCNN(3, width, N_OUT[k]).eval() for k in ("sex", "race", "age")}
    return QCModels(sex=SexModel(nets["sex"], convention, input_size, None),
                    race=RaceModel(nets["race"], convention, input_size, None),
                    age=AgeModel(nets["age"], convention, input_size, None),
                    model_id=f"stand-in:SmallCNN(seed={seed})", model_hash=f"seed{seed}")
