"""Feature and scoring networks of the generator metrics, loaded from local files.

Every net takes decoded images, B x 1 x H x W floats in [0, 1] (square), and
owns its preprocessing. Roles, and the metrics that need them:

  inception  FID                  Inception-v3 2048-d pool features. Weights are
                                  pluggable: "fid" = the TensorFlow FID Inception
                                  (pt_inception-2015-12-05-6726825d.pth, or
                                  torch-fidelity's weights-inception-2015-12-05-
                                  6726825d.pth; TF-compatible blocks, images as
                                  uint8, TF1 bilinear resize to 299, (x - 128) / 128),
                                  "torchvision" = torchvision's ImageNet Inception-v3
                                  (inception_v3_google-0cc3c7bd.pth; bilinear to 299,
                                  2x - 1).
  disease    disease AUROC,       torchxrayvision DenseNet-121 "all": 18 outputs and
             FID (xrv)            1024-d pooled features (area resize to 224,
                                  [-1024, 1024]).
  biovil     BioViL cosines       BioViL image encoder (ResNet-50 + 1x1-conv
                                  projector, 128-d projected global embedding; resize
                                  the short side to 512, center crop 448, 0..1, 3 channels).

An *eval bundle* (a folder with `eval_bundle.json`, e.g. the demo's stand-ins)
replaces all three with small nets: `rv2.models.qc_networks.SmallCNN`s in safetensors.

A net that cannot be loaded becomes an `Unavailable` with a reason naming the
file, the folders searched and the metrics that needed it; the runner skips
those metrics and computes the others.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rv2.files import atomic_write_text
from rv2.weights import MissingWeightsError, find_weights, locate, weight_dirs

log = logging.getLogger("rv2.evaluate.feature_nets")

BUNDLE_FILE = "eval_bundle.json"
BUNDLE_FORMAT = "rv2-eval-bundle"
BUNDLE_VERSION = 1

# torchxrayvision's output names -> rv2's CheXpert label names (where they differ)
XRV_TO_RV2 = {"Effusion": "Pleural Effusion"}
XRV_PATHOLOGIES: tuple[str, ...] = (
    "Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema",
    "Fibrosis", "Effusion", "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass",
    "Hernia", "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum")

ROLE_METRICS = {
    "inception": "FID (Inception-v3 pool features)",
    "disease": "disease AUROC (prompt alignment) and FID on torchxrayvision features",
    "biovil": "BioViL cosine similarity (real-synthetic and intra-prompt diversity)",
}


@dataclasses.dataclass
class Unavailable:
    """A net that could not be loaded, and why (the runner reports it and skips its metrics)."""

    role: str
    reason: str

    def __bool__(self) -> bool:
        return False


class FeatureNet:
    """A loaded net: `features(images)` -> (B, D) float32; `predict` for classifiers."""

    role = ""
    labels: tuple[str, ...] = ()

    def __init__(self, module, model_id: str, device="cpu"):
        self.module = module.eval()
        self.model_id = model_id
        self.device = device
        self.module.to(device)

    def preprocess(self, x):  # pragma: no cover - each net defines it
        raise NotImplementedError

    def _features(self, x):
        raise NotImplementedError

    def features(self, images, batch_size: int = 32) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = [self._features(self.preprocess(_check(images[i:i + batch_size]).to(self.device)))
                   .float().cpu() for i in range(0, images.shape[0], max(1, batch_size))]
        d = out[0].shape[1] if out else 0
        return torch.cat(out).numpy() if out else np.zeros((0, d), np.float32)


def _check(x):
    import torch

    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 1:
        shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise ValueError(f"feature nets take images B x 1 x H x W in [0, 1]; got {shape}")
    return x.float()


def resize_area(x, size: int):
    """Square resize: area averaging when shrinking (as the paper did before the XRV
    models), bilinear when enlarging."""
    import torch.nn.functional as F

    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    if x.shape[-1] >= size and x.shape[-2] >= size:
        return F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def resize_bilinear_tf1(x, size: int):
    """TensorFlow 1's bilinear resize (align_corners=False, no half-pixel centres:
    source = destination x in/out, computed in float32 as TF does), as the FID
    Inception's graph resized its input."""
    import torch

    def axis(n_in: int):
        src = torch.arange(size, dtype=torch.float32) * torch.tensor(n_in / size, dtype=torch.float32)
        i0 = src.long()
        return i0, (i0 + 1).clamp(max=n_in - 1), (src - i0.float()).to(x.dtype)

    y0, y1, fy = axis(x.shape[-2])
    x0, x1, fx = axis(x.shape[-1])
    fy, fx = fy.to(x.device).view(-1, 1), fx.to(x.device)
    top, bottom = x[..., y0, :], x[..., y1, :]
    left = top[..., x0] + (top[..., x1] - top[..., x0]) * fx
    right = bottom[..., x0] + (bottom[..., x1] - bottom[..., x0]) * fx
    return left + (right - left) * fy


# ------------------------------------------------------------------ Inception-v3

def _fid_blocks():
    """torchvision Inception blocks with the TensorFlow FID graph's pooling: average
    pools leave padding out of the mean; the last block max-pools its pool branch."""
    import torch
    import torch.nn.functional as F
    from torchvision.models.inception import InceptionA, InceptionC, InceptionE

    def avg(x):
        return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)

    class FIDInceptionA(InceptionA):
        def _forward(self, x):
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            return [self.branch1x1(x), b5, b3, self.branch_pool(avg(x))]

    class FIDInceptionC(InceptionC):
        def _forward(self, x):
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            d = x
            for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                          self.branch7x7dbl_4, self.branch7x7dbl_5):
                d = layer(d)
            return [self.branch1x1(x), b7, d, self.branch_pool(avg(x))]

    class FIDInceptionE(InceptionE):
        pool = "avg"

        def _forward(self, x):
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
            p = avg(x) if self.pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
            return [self.branch1x1(x), b3, d, self.branch_pool(p)]

    class FIDInceptionEMax(FIDInceptionE):
        pool = "max"

    return FIDInceptionA, FIDInceptionC, FIDInceptionE, FIDInceptionEMax


def build_inception(kind: str):
    """An Inception-v3 without weights: kind "fid" (TF FID graph, 1008 classes) or
    "torchvision" (ImageNet, 1000 classes)."""
    from torchvision.models.inception import Inception3

    if kind == "torchvision":
        return Inception3(num_classes=1000, aux_logits=False, transform_input=False,
                          init_weights=False)
    if kind != "fid":
        raise ValueError(f"inception kind must be 'fid' or 'torchvision'; got {kind!r}")
    A, C, E, EMax = _fid_blocks()
    net = Inception3(num_classes=1008, aux_logits=False, transform_input=False, init_weights=False)
    net.Mixed_5b, net.Mixed_5c, net.Mixed_5d = A(192, 32), A(256, 64), A(288, 64)
    net.Mixed_6b, net.Mixed_6c = C(768, 128), C(768, 160)
    net.Mixed_6d, net.Mixed_6e = C(768, 160), C(768, 192)
    net.Mixed_7b, net.Mixed_7c = E(1280), EMax(2048)
    return net


class InceptionFeatures(FeatureNet):
    role = "inception"

    def __init__(self, module, kind: str, model_id: str, device="cpu"):
        super().__init__(module, model_id, device)
        self.kind = kind

    def preprocess(self, x):
        x = x.expand(-1, 3, -1, -1)
        if self.kind == "fid":
            u8 = (x.clamp(0, 1) * 255).round()        # the FID graph saw 8-bit images
            return (resize_bilinear_tf1(u8, 299) - 128) / 128
        import torch.nn.functional as F

        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return 2 * x - 1

    def _features(self, x):
        m = self.module
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1",
                     "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c",
                     "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                     "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool"):
            x = getattr(m, name)(x)
        return x.flatten(1)


def load_inception(path: str | os.PathLike, kind: str, device="cpu") -> InceptionFeatures:
    import torch

    path = Path(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = build_inception(kind)
    if kind == "torchvision":
        state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: not an Inception-v3 ({kind}) state dict; missing "
                         f"{list(missing)[:3]}, unexpected {list(unexpected)[:3]}")
    return InceptionFeatures(net, kind, f"inception-{kind}:{path.name}@{_short_hash(path)}", device)


# ------------------------------------------------------------------ torchxrayvision DenseNet

class XRVDenseNet(FeatureNet):
    """torchxrayvision DenseNet-121: probabilities of `labels` and 1024-d pooled features."""

    role = "disease"

    def __init__(self, module, model_id: str, labels: Sequence[str], device="cpu", size: int = 224):
        super().__init__(module, model_id, device)
        self.labels = tuple(labels)
        self.size = size

    def preprocess(self, x):
        return (2 * resize_area(x.clamp(0, 1), self.size) - 1) * 1024

    def _features(self, x):
        import torch.nn.functional as F

        return F.adaptive_avg_pool2d(F.relu(self.module.features(x)), 1).flatten(1)

    def predict(self, images, batch_size: int = 32) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, images.shape[0], max(1, batch_size)):
                x = self.preprocess(_check(images[i:i + batch_size]).to(self.device))
                out.append(torch.sigmoid(self.module.classifier(self._features(x))).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.labels)), np.float32)


def load_xrv_densenet(path: str | os.PathLike, trust_pickle: bool = False, device="cpu") -> XRVDenseNet:
    """The DenseNet from a state dict (safe) or, with `trust_pickle`, from
    torchxrayvision's published whole-model pickle."""
    import torch
    import torchxrayvision as xrv

    path = Path(path)
    net = xrv.models.DenseNet(weights=None)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the published file is a pickled model
        if not trust_pickle:
            raise ValueError(f"{path} is a pickled model, not a state dict: loading it runs code "
                             "from the file. If you trust it (torchxrayvision's published file), "
                             "set xrv_trust_pickle=true, or save its state_dict() once and point "
                             f"rv2 at that ({type(exc).__name__})") from None
        obj = torch.load(path, map_location="cpu", weights_only=False)
        state = obj.state_dict() if hasattr(obj, "state_dict") else obj
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k: v for k, v in state.items() if k.startswith(("features.", "classifier."))}
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path}: not a torchxrayvision DenseNet-121 (18 outputs): {exc}") from exc
    labels = [XRV_TO_RV2.get(p, p) for p in XRV_PATHOLOGIES]
    return XRVDenseNet(net, f"xrv-densenet:{path.name}@{_short_hash(path)}", labels, device)


# ------------------------------------------------------------------ BioViL

BIOVIL_FILE = "biovil_image_resnet50_proj_size_128.pt"


def build_biovil(proj: int = 128):
    """BioViL's image model: ResNet-50 trunk (`encoder.encoder.*`) and a 1x1-conv
    projector (`projector.model.*`: conv 2048->proj, BN, ReLU, conv proj->proj)."""
    import torchvision
    from torch import nn

    class Trunk(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = torchvision.models.resnet50(weights=None)
            self.encoder.fc = nn.Identity()

        def forward(self, x):
            e = self.encoder
            x = e.maxpool(e.relu(e.bn1(e.conv1(x))))
            return e.layer4(e.layer3(e.layer2(e.layer1(x))))

    class Projector(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.Sequential(nn.Conv2d(2048, proj, 1, bias=False), nn.BatchNorm2d(proj),
                                       nn.ReLU(inplace=True), nn.Conv2d(proj, proj, 1))

        def forward(self, x):
            return self.model(x)

    class BioViLImage(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = Trunk()
            self.projector = Projector()

        def forward(self, x):  # projected global embedding, as BioViL's ImageModel
            return self.projector(self.encoder(x)).mean(dim=(2, 3))

    return BioViLImage()


class BioViLEncoder(FeatureNet):
    role = "biovil"

    def __init__(self, module, model_id: str, device="cpu", resize: int = 512, crop: int = 448):
        super().__init__(module, model_id, device)
        self.resize, self.crop = resize, crop

    def preprocess(self, x):
        import torch.nn.functional as F

        x = F.interpolate(x.clamp(0, 1), size=(self.resize, self.resize), mode="bilinear",
                          align_corners=False, antialias=True)
        o = (self.resize - self.crop) // 2
        return x[..., o:o + self.crop, o:o + self.crop].expand(-1, 3, -1, -1)

    def _features(self, x):
        return self.module(x)


def load_biovil(path: str | os.PathLike, device="cpu") -> BioViLEncoder:
    import torch

    path = Path(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if k.startswith(("encoder.", "projector."))
             and not k.startswith("encoder.encoder.fc.")}
    net = build_biovil()
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path}: not a BioViL image model state dict (ResNet-50 + 128-d "
                         f"projector): {exc}") from exc
    return BioViLEncoder(net, f"biovil:{path.name}@{_short_hash(path)}", device)


# ------------------------------------------------------------------ eval bundle (stand-ins)

class BundleNet(FeatureNet):
    """A bundle SmallCNN: input resized (area) to `input_size`, 2x - 1; features are
    the pooled trunk, or the head's outputs when `embedding` is "head"."""

    def __init__(self, module, role: str, model_id: str, input_size: int, labels=(),
                 embedding: str = "pool", device="cpu"):
        super().__init__(module, model_id, device)
        self.role = role
        self.input_size = int(input_size)
        self.labels = tuple(labels)
        self.embedding = embedding

    def preprocess(self, x):
        return 2 * resize_area(x.clamp(0, 1), self.input_size) - 1

    def _pool(self, x):
        return self.module.features(x).mean(dim=(2, 3))

    def _features(self, x):
        f = self._pool(x)
        return self.module.head(f) if self.embedding == "head" else f

    def predict(self, images, batch_size: int = 32) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, images.shape[0], max(1, batch_size)):
                x = self.preprocess(_check(images[i:i + batch_size]).to(self.device))
                out.append(torch.sigmoid(self.module.head(self._pool(x))).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.labels)), np.float32)


def save_eval_bundle(out_dir: str | os.PathLike, nets: dict[str, Any], spec: dict[str, dict]) -> Path:
    """Save stand-in nets: spec[role] = {"arch": "SmallCNN", "kwargs": {...},
    "input_size": int, "labels": [...] (disease), "embedding": "pool" | "head",
    "note": "how it was made"}."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "nets": {}}
    for role, net in nets.items():
        if role not in ROLE_METRICS:
            raise ValueError(f"unknown role {role!r}; roles: {sorted(ROLE_METRICS)}")
        s = dict(spec[role])
        fname = f"{role}.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
                  str(out / fname))
        doc["nets"][role] = {**s, "file": fname}
    atomic_write_text(out / BUNDLE_FILE, json.dumps(doc, indent=2))
    return out


def load_bundle_net(bundle: str | os.PathLike, role: str, device="cpu") -> BundleNet | Unavailable:
    from safetensors.torch import load_file

    from rv2.models.qc_networks import build_net

    bundle = Path(bundle)
    doc = json.loads((bundle / BUNDLE_FILE).read_text())
    if doc.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{bundle / BUNDLE_FILE}: format {doc.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    s = (doc.get("nets") or {}).get(role)
    if s is None:
        return Unavailable(role, f"{ROLE_METRICS[role]} skipped: eval bundle {bundle} has no "
                                 f"'{role}' net")
    f = bundle / s["file"]
    if not f.is_file():
        return Unavailable(role, f"{ROLE_METRICS[role]} skipped: missing weight file {f.name} "
                                 f"(searched: {bundle})")
    net = build_net(s["arch"], **s.get("kwargs", {}))
    net.load_state_dict(load_file(str(f)))
    return BundleNet(net, role, f"bundle-{role}:{bundle.name}/{f.name}@{_short_hash(f)}",
                     s["input_size"], s.get("labels", ()), s.get("embedding", "pool"), device)


# ------------------------------------------------------------------ resolution

def _short_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()[:12]


def _missing(role: str, exc: MissingWeightsError) -> Unavailable:
    return Unavailable(role, f"{ROLE_METRICS[role]} skipped: {exc}")


def load_nets(roles: Sequence[str], *, bundle: str | None = None, dirs: Sequence[str] = (),
              inception: str = "fid", biovil_path: str | None = None,
              xrv_trust_pickle: bool = False, device="cpu") -> dict[str, FeatureNet | Unavailable]:
    """The nets of `roles`, each loaded or an `Unavailable` saying why.

    A bundle folder serves every role it holds; otherwise the real files are
    looked for in `dirs`, then RV2_WEIGHTS_DIR, ~/.cache/rv2/weights and
    ~/.torchxrayvision/models_data (rv2.weights)."""
    out: dict[str, FeatureNet | Unavailable] = {}
    for role in roles:
        try:
            if bundle:
                if not (Path(bundle) / BUNDLE_FILE).is_file():
                    out[role] = Unavailable(role, f"{ROLE_METRICS[role]} skipped: {bundle} is not "
                                                  f"an eval bundle (no {BUNDLE_FILE})")
                else:
                    out[role] = load_bundle_net(bundle, role, device)
            elif role == "inception":
                keys = (["inception", "inception_fidelity"] if inception == "fid"
                        else ["inception_torchvision"])
                path = next((p for p in (locate(k, dirs) for k in keys) if p), None)
                if path is None:
                    find_weights(keys[:1], dirs)  # raises, naming the file and the folders
                out[role] = load_inception(path, inception, device)
            elif role == "disease":
                path = find_weights(["xrv_densenet"], dirs)["xrv_densenet"]
                out[role] = load_xrv_densenet(path, xrv_trust_pickle, device)
            elif role == "biovil":
                out[role] = load_biovil(_biovil_file(biovil_path, dirs), device)
            else:
                raise ValueError(f"unknown role {role!r}; roles: {sorted(ROLE_METRICS)}")
        except MissingWeightsError as exc:
            out[role] = _missing(role, exc)
        except (ValueError, OSError, RuntimeError) as exc:
            out[role] = Unavailable(role, f"{ROLE_METRICS[role]} skipped: {exc}")
        if not out[role]:
            log.warning("%s", out[role].reason)
    return out


def _biovil_file(path: str | None, dirs: Sequence[str]) -> Path:
    """An explicit file, a folder holding BIOVIL_FILE, else BIOVIL_FILE in the weight
    folders or their `biovil/` subfolders."""
    if path:
        p = Path(path).expanduser()
        if p.is_file():
            return p
        if (p / BIOVIL_FILE).is_file():
            return p / BIOVIL_FILE
        raise MissingWeightsError(f"missing model weights:\n  - {BIOVIL_FILE}  (BioViL image "
                                  f"encoder)\nsearched:\n  - {p}\nbiovil_path must be the file or "
                                  "a folder holding it; rv2 never downloads weights.")
    found = locate(BIOVIL_FILE, dirs) or locate(f"biovil/{BIOVIL_FILE}", dirs)
    if found:
        return found
    searched = "\n".join(f"  - {d}  (and {d / 'biovil'})" for d in weight_dirs(dirs))
    raise MissingWeightsError(f"missing model weights:\n  - {BIOVIL_FILE}  (BioViL image encoder)"
                              f"\nsearched:\n{searched}\nPlace the file in one of these folders, "
                              "or set biovil_path; rv2 never downloads weights.")
