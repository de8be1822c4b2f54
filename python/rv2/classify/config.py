"""Settings of `rv2 train-classifier` (defaults follow the paper's Methods)."""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal, Mapping

from rv2.config import Config
from rv2.data.label_policy import DEFAULT_TEXT, LabelPolicy, from_legacy
from rv2.data.labels import parse_views

STRATEGIES = ("real", "synthetic", "mixed", "pretrain-finetune")
VAL_SPLIT_ALIASES = ("val", "valid", "validate", "validation")


@dataclasses.dataclass
class ClassifierConfig(Config):
    VERSION: ClassVar[int] = 2  # 2: label_policy replaces uncertain_policy / unknown_policy

    strategy: Literal["real", "synthetic", "mixed", "pretrain-finetune"] = "real"
    real: str | None = None        # manifest of real training images
    synthetic: str | None = None   # manifest (store) of synthetic images
    val: str | None = None         # validation manifest; default: the real manifest's val split
    out: str | None = None         # model dir
    # Image roots (manifest `path`s are relative to them); default: the root recorded in the
    # manifest's sidecar by `rv2 data index`, else the manifest's folder.
    root: str | None = None        # for every manifest, unless one of the next three is set
    real_root: str | None = None
    synthetic_root: str | None = None
    val_root: str | None = None
    # Which rows of a manifest with a `split` column are used (None: all rows).
    train_split: str | None = "train"
    val_split: str | None = "val"  # also matches valid / validate / validation

    # Views used from every manifest: "all" (warns when a manifest mixes views; the paper
    # uses PA only) or a comma list, e.g. "PA".
    views: str = "all"

    # Label efficiency: patient-level, seeded subsets of the real training set.
    n_real: int | None = None
    real_fraction: float | None = None
    n_synthetic: int | None = None  # images drawn (seeded) from the synthetic manifest
    subset_seed: int = 0

    # Model
    image_size: int = 224
    init: Literal["auto", "imagenet", "scratch"] = "auto"  # auto: paper (imagenet; scratch to pretrain)
    weights_dir: str | None = None
    pretrained_from: str | None = None  # pretrain-finetune: reuse this synthetic-pretrained model dir

    # Optimisation (paper: AdamW 1e-4, wd 0.05, cosine, <=100 epochs, patience 20 on val loss)
    lr: float = 1e-4
    finetune_lr: float = 5e-5
    weight_decay: float = 0.05
    epochs: int = 100
    # Learning-rate schedule (recorded in the model's config and summary):
    #   cosine    decays per step from lr to lr x min_lr_ratio over `expected_epochs`
    #             (default: epochs; set it near where early stopping ends a run, or the
    #             rate barely decays), then holds that end value;
    #   plateau   lr x plateau_factor when the validation loss has not improved for
    #             plateau_patience epochs;
    #   constant  lr throughout.
    lr_schedule: Literal["cosine", "plateau", "constant"] = "cosine"
    expected_epochs: int | None = None
    min_lr_ratio: float = 0.0
    plateau_factor: float = 0.1
    plateau_patience: int = 5
    pretrain_epochs: int | None = None   # default: epochs
    patience: int = 20
    batch_size: int = 32
    eval_batch_size: int | None = None   # default: 2 x batch_size
    max_steps: int | None = None         # per training phase
    time_limit_s: float | None = None    # per training phase; stops after the current step
    seed: int = 0

    # Labels: what uncertain (-1) and blank labels become, for the loss, the thresholds and
    # (recorded in the model folder) evaluation: "uncertain=0|1|ignore,blank=0|ignore".
    label_policy: str = DEFAULT_TEXT

    # Normalization: from the full real training manifest if given, else the synthetic one
    norm_mean: float | None = None
    norm_std: float | None = None
    norm_max_images: int = 2000

    # Runtime
    device: str = "auto"          # auto | cpu | cuda | cuda:N
    amp: bool = True              # bf16 autocast on CUDA only
    channels_last: bool = True    # on CUDA only
    num_workers: int = 4
    cache_images: bool = False    # keep preprocessed images in memory (num_workers=0 only)
    # Image decoding: "pil" (Pillow / pydicom), or "dali" (rv2[dali]; batched, on the GPU
    # when training on CUDA, CPU operators otherwise).
    decoder: Literal["pil", "dali"] = "pil"
    on_bad_image: Literal["error", "skip"] = "error"
    progress: bool = True

    def __post_init__(self):
        self.label_policy = str(LabelPolicy.parse(self.label_policy))  # checked, canonical
        parse_views(self.views)  # a bad view name fails here, not after loading data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>") -> "ClassifierConfig":
        data = dict(data)
        if int(data.get("config_version", cls.VERSION)) < 2:  # version 1 spelled the policy in two keys
            unc, unk = data.pop("uncertain_policy", None), data.pop("unknown_policy", None)
            data.setdefault("label_policy", str(from_legacy(unc, unk)))
        return super().from_dict(data, source=source)
