"""Where rv2 looks for model weights, and what it looks for.

Nothing is ever downloaded. Weights sit in folders the user configures:
`RV2_WEIGHTS_DIR` (one or more folders, `os.pathsep`-separated), then
`~/.cache/rv2/weights`, then torchxrayvision's `~/.torchxrayvision/models_data/`.
A missing file raises `MissingWeightsError` naming the file and every folder
searched.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

from rv2 import envs
from rv2.errors import MissingInputError, UserError


class MissingWeightsError(MissingInputError):
    """Raised with a message that names each missing file and each place searched."""


@dataclasses.dataclass(frozen=True)
class KnownWeight:
    key: str
    filename: str  # a file, or a folder for diffusers / HF models (kind == "folder")
    description: str
    kind: str = "file"  # file | folder
    marker: str = ""    # for folders: a file that must exist inside


KNOWN_WEIGHTS: tuple[KnownWeight, ...] = (
    KnownWeight("race", "resnet_race_detection_val-loss_0.157_mimic_public.pt",
                "QC race model (torchxrayvision emory_hiti ResNet-34, DataParallel state dict)"),
    KnownWeight("age", "baseline_models_riken_xray_age_every_model_age_senet154_v2_tl_26_ft_7_fp32.pt",
                "QC age model (torchxrayvision riken SENet-154, TorchScript)"),
    KnownWeight("sex", "sex_model_chexpert_resnet_all.ckpt",
                "QC sex model (chexploration ResNet-34, Lightning checkpoint)"),
    KnownWeight("sex_xrv", "mira_sex_resnet-all_epoch_13-step_7125.ckpt",
                "QC sex model, torchxrayvision's copy of the chexploration model"),
    KnownWeight("xrv_densenet",
                "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
                "torchxrayvision DenseNet-121 'all' (pickled model; trusted files only)"),
    KnownWeight("densenet_imagenet", "densenet121-a639ec97.pth",
                "torchvision DenseNet-121 ImageNet weights"),
    KnownWeight("inception", "pt_inception-2015-12-05-6726825d.pth",
                "Inception-v3 weights for FID (TensorFlow FID graph, pytorch-fid's file)"),
    KnownWeight("inception_fidelity", "weights-inception-2015-12-05-6726825d.pth",
                "Inception-v3 weights for FID (torch-fidelity's copy of the same graph)"),
    KnownWeight("inception_torchvision", "inception_v3_google-0cc3c7bd.pth",
                "torchvision Inception-v3 ImageNet weights (FID with torchvision features)"),
    KnownWeight("sd21_base", "stable-diffusion-2-1-base", "Stable Diffusion 2.1 base (diffusers folder)",
                kind="folder", marker="model_index.json"),
    KnownWeight("roentgen_v2", "roentgen-v2", "RoentGen-v2 generator (diffusers folder)",
                kind="folder", marker="model_index.json"),
    KnownWeight("biovil", "biovil", "BioViL image encoder (folder)", kind="folder"),
    KnownWeight("biovil_image", "biovil_image_resnet50_proj_size_128.pt",
                "BioViL image encoder (ResNet-50 + projector state dict)"),
)

KNOWN_BY_KEY = {w.key: w for w in KNOWN_WEIGHTS}


def weight_dirs(extra: Iterable[str | os.PathLike | None] = ()) -> list[Path]:
    """Folders searched, in order: explicit ones, RV2_WEIGHTS_DIR, rv2's cache, torchxrayvision's."""
    dirs: list[Path] = [Path(d).expanduser() for d in extra if d]
    dirs += envs.weights_dirs()
    dirs.append(envs.cache_dir() / "weights")
    dirs.append(Path("~/.torchxrayvision/models_data").expanduser())
    seen, out = set(), []
    for d in dirs:
        if d not in seen:
            seen.add(d)
            out.append(d)
    return out


def _present(path: Path, w: KnownWeight) -> bool:
    if w.kind == "folder":
        return path.is_dir() and (not w.marker or (path / w.marker).is_file())
    return path.is_file()


def locate(key_or_filename: str, dirs: Sequence[str | os.PathLike | None] = ()) -> Path | None:
    """Path of a known weight (by key) or any file name, or None."""
    w = KNOWN_BY_KEY.get(key_or_filename) or KnownWeight(key_or_filename, key_or_filename, "")
    for d in weight_dirs(dirs):
        p = d / w.filename
        if _present(p, w):
            return p
    return None


def find_weights(keys: Sequence[str], dirs: Sequence[str | os.PathLike | None] = ()) -> dict[str, Path]:
    """Paths of all requested weights, or one MissingWeightsError listing every missing one."""
    found, missing = {}, []
    for key in keys:
        p = locate(key, dirs)
        if p is None:
            missing.append(KNOWN_BY_KEY.get(key) or KnownWeight(key, key, ""))
        else:
            found[key] = p
    if missing:
        searched = "\n".join(f"  - {d}" for d in weight_dirs(dirs))
        names = "\n".join(f"  - {w.filename}" + (f"  ({w.description})" if w.description else "")
                          for w in missing)
        raise MissingWeightsError(
            f"missing model weights:\n{names}\nsearched:\n{searched}\n"
            "Place the files in one of these folders (or pass the folder explicitly, "
            "e.g. --qc-weights-dir, or set RV2_WEIGHTS_DIR); rv2 never downloads weights.")
    return found


def inventory(dirs: Sequence[str | os.PathLike | None] = ()) -> list[tuple[KnownWeight, Path | None]]:
    """Every known weight with where it was found (None if nowhere)."""
    return [(w, locate(w.key, dirs)) for w in KNOWN_WEIGHTS]


class CorruptWeightsError(UserError):
    """A weights file that is truncated or not what its name says."""


def check_safetensors(path: str | os.PathLike, what: str = "weights") -> None:
    """Read a .safetensors file's header (no tensors): CorruptWeightsError naming the
    file when it is truncated, not safetensors, or its tensors run past its end."""
    p = Path(path)
    size = p.stat().st_size
    bad = None
    with open(p, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            bad = f"header length {n} does not fit the file's {size} bytes"
        else:
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                header, bad = None, f"header is not JSON ({exc})"
            if header is not None:
                if not isinstance(header, dict):
                    bad = "header is not a JSON object"
                else:
                    ends = [v["data_offsets"][1] for k, v in header.items()
                            if k != "__metadata__" and isinstance(v, dict)
                            and isinstance(v.get("data_offsets"), list)
                            and len(v["data_offsets"]) == 2]
                    if ends and 8 + n + max(ends) > size:
                        bad = (f"truncated: tensors need {8 + n + max(ends)} bytes, the file "
                               f"has {size}")
    if bad:
        raise CorruptWeightsError(f"{what}: {p} is corrupt ({bad}); restore or re-download "
                                  "that file")

