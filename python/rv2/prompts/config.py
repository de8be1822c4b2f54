"""Settings of the prompts stage (one config for build and expand)."""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from rv2.config import Config
from rv2.data.labels import parse_views
from rv2.data.schema import STUDY_RACES
from rv2.prompts.summarize import LLMSettings
from rv2.prompts.template import PromptTemplate

# Impressions that describe nothing (the paper excludes them), matched on the
# lower-cased text without its final period.
NONDESCRIPTIVE_DEFAULT = (
    r"^(?:see|as)(?: (?:above|below|findings?|report|comment|discussed))+$",
    r"^(?:none|n/?a|no impression|no comment|deferred|pending|addendum|see note)$",
    r"^(?:please )?(?:refer|see) to (?:the )?(?:findings|report|body of (?:the )?report)(?: above)?$",
    # Nothing but de-identification placeholders (with deid=keep).
    r"^(?:_{2,}|x{3,}|[\s.,;:-])*$",
)


@dataclasses.dataclass
class FitSettings:
    """How prompts are fitted to the CLIP text encoder's window."""

    max_tokens: int = 77
    summarizer: Literal["rule", "llm"] = "rule"
    # Fit every impression so that all expansion variants (any sex, race and an
    # age in 18..90) also fit, which keeps one impression text for all 8.
    reserve_for_expansion: bool = True
    llm: LLMSettings = dataclasses.field(default_factory=LLMSettings)


@dataclasses.dataclass
class ExpandSettings:
    """Balanced demographic expansion: every source prompt x sexes x races."""

    age_jitter: int = 5
    seed: int = 0
    age_min: int = 18
    age_max: int = 90
    sexes: list[str] = dataclasses.field(default_factory=lambda: ["F", "M"])
    races: list[str] = dataclasses.field(default_factory=lambda: list(STUDY_RACES))
    # Source rows of these splits are expanded (the paper: train only); empty = all rows.
    splits: list[str] = dataclasses.field(default_factory=lambda: ["train"])


@dataclasses.dataclass
class PromptsConfig(Config):
    VERSION: ClassVar[int] = 1

    template: PromptTemplate = dataclasses.field(default_factory=PromptTemplate)
    # auto: the manifest's `impression` where non-empty, else extracted from `report`.
    impression_source: Literal["auto", "impression", "report"] = "auto"
    # De-identification placeholders ("___", "XXXX"): keep | remove | drop_sentence.
    deid: Literal["keep", "remove", "drop_sentence"] = "remove"
    nondescriptive: list[str] = dataclasses.field(default_factory=lambda: list(NONDESCRIPTIVE_DEFAULT))
    # Views of the manifest used: "all" (warns when the manifest mixes views; the paper
    # uses PA only) or a comma list, e.g. "PA".
    views: str = "all"
    # Keep rows lacking sex, age or race, with the impression alone as the prompt.
    allow_missing_demographics: bool = False
    fit: FitSettings = dataclasses.field(default_factory=FitSettings)
    expand: ExpandSettings = dataclasses.field(default_factory=ExpandSettings)

    def __post_init__(self):
        parse_views(self.views)  # a bad view name fails when the config is made
