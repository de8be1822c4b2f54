"""Settings of `rv2 data index` (saved in the manifest's metadata)."""
from __future__ import annotations

import dataclasses
import re

from rv2.config import Config
from rv2.data.labels import parse_views
from rv2.errors import UserError

DATASETS = ("mimic", "chexpert", "chexpert-plus", "nih", "padchest", "vindr", "openi")

DEFAULT_NONDESCRIPTIVE = (
    r"see (above|below|findings|report|text)\.?",
    r"as above\.?",
    r"(no|without) (significant |interval |appreciable )?(interval )?change\.?",
    r"(unchanged|stable|no new findings)( from prior)?\.?",
    r"(please )?(refer to|see) (the )?(findings|body of the report|wet read)\.?",
    r"(none|n/?a|nil|deferred|pending)\.?",
)


@dataclasses.dataclass
class IndexConfig(Config):
    """Settings of `rv2 data index` (saved in the manifest's metadata)."""

    VERSION = 2  # 2: uncertain_policy dropped (the classifier's label_policy decides)
    dataset: str = "mimic"
    views: str = "all"                    # "all" or a comma list: PA, AP, LATERAL, LL, ...
    no_finding_rule: bool = True          # No Finding = 1 -> blank findings 0; finding = 1 -> blank NF 0
    # MIMIC
    split_mode: str = "paper"             # paper (p19 test, rest by patient) | official
    test_folders: list[str] = dataclasses.field(default_factory=lambda: ["p19"])
    val_fraction: float = 0.02            # of p10-p18 patients, seeded
    seed: int = 0
    mimic_labeler: str = "chexpert"       # chexpert | negbio
    reports_root: str = ""                # default: the image root
    paper_exclusions: bool = True         # impression, sex/age, race exclusions (MIMIC)
    min_impression_words: int = 2
    nondescriptive_patterns: list[str] = dataclasses.field(
        default_factory=lambda: list(DEFAULT_NONDESCRIPTIVE))
    # other datasets
    default_split: str = "test"           # for sources without a split of their own
    vindr_aggregate: str = "any"          # any | majority, over VinDr's readers
    # files
    verify_files: bool = False
    max_pixels: int = 8192 * 8192
    workers: int = 2
    locate_by_name: bool = True

    @classmethod
    def from_dict(cls, data, *, source: str = "<dict>") -> "IndexConfig":
        data = dict(data)
        if int(data.get("config_version", cls.VERSION)) < 2:
            # version 1 recorded an uncertain-label policy that nothing applied: the labels are
            # stored as the source gives them and the classifier's label_policy decides
            data.pop("uncertain_policy", None)
        return super().from_dict(data, source=source)

    def check(self) -> "IndexConfig":
        if self.dataset not in DATASETS:
            raise UserError(f"unknown dataset {self.dataset!r}; choose one of {list(DATASETS)}")
        if self.split_mode not in ("paper", "official"):
            raise UserError("split_mode must be 'paper' or 'official'")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UserError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.mimic_labeler not in ("chexpert", "negbio"):
            raise UserError("mimic_labeler must be 'chexpert' or 'negbio'")
        if self.vindr_aggregate not in ("any", "majority"):
            raise UserError("vindr_aggregate must be 'any' or 'majority'")
        if self.default_split not in ("train", "validate", "test"):
            raise UserError("default_split must be train, validate or test")
        parse_views(self.views)
        for pat in self.nondescriptive_patterns:
            try:
                re.compile(pat)
            except re.error as exc:
                raise UserError(f"nondescriptive_patterns: {pat!r} is not a regular expression "
                                f"({exc})") from None
        return self
