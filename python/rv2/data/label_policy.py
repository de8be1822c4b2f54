"""One label policy from training to evaluation.

A manifest keeps labels as the source says: 1 positive, 0 negative, -1
uncertain, NaN blank (not mentioned). A `LabelPolicy` says what the uncertain
and blank values become, for the training loss, the threshold search and the
evaluation alike:

    uncertain -> 0 | 1 | ignore     blank -> 0 | ignore

"ignore" leaves the case out of that label only. The default, uncertain -> 0
and blank -> 0, follows the fairness work the paper builds on (Seyyed-Kalantari
et al. 2021; Glocker et al. 2023), which scores uncertain and missing labels as
negatives. The text form is "uncertain=0,blank=0"; it is recorded with every
trained classifier (model_config.json, thresholds.json) and named in reports.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from rv2.errors import UserError

UNCERTAIN_VALUES = ("0", "1", "ignore")
BLANK_VALUES = ("0", "ignore")
# older spellings (rv2 <= 0.x configs, `rv2 data index` sidecars)
_ALIASES = {"zeros": "0", "zero": "0", "ones": "1", "one": "1", "0.0": "0", "1.0": "1"}


class LabelPolicyError(UserError):
    """A label policy that cannot be parsed; the message shows the accepted form."""


@dataclasses.dataclass(frozen=True)
class LabelPolicy:
    uncertain: str = "0"
    blank: str = "0"

    def __post_init__(self):
        u = _ALIASES.get(str(self.uncertain), str(self.uncertain))
        b = _ALIASES.get(str(self.blank), str(self.blank))
        if u not in UNCERTAIN_VALUES:
            raise LabelPolicyError(f"label policy: uncertain must be one of {UNCERTAIN_VALUES}, "
                                   f"got {self.uncertain!r}")
        if b not in BLANK_VALUES:
            raise LabelPolicyError(f"label policy: blank must be one of {BLANK_VALUES}, "
                                   f"got {self.blank!r}")
        object.__setattr__(self, "uncertain", u)
        object.__setattr__(self, "blank", b)

    @classmethod
    def parse(cls, value: str | Mapping | LabelPolicy | None) -> LabelPolicy:
        """From "uncertain=0,blank=ignore", a mapping, a LabelPolicy, or None (the default)."""
        if value is None:
            return cls()
        if isinstance(value, LabelPolicy):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - {"uncertain", "blank"}
            if unknown:
                raise LabelPolicyError(f"label policy: unknown key(s) {sorted(unknown)}; "
                                       "expected uncertain and blank")
            return cls(str(value.get("uncertain", "0")), str(value.get("blank", "0")))
        parts: dict[str, str] = {}
        for item in str(value).replace(";", ",").split(","):
            if not item.strip():
                continue
            key, sep, val = item.partition("=")
            key = key.strip()
            if not sep or key not in ("uncertain", "blank"):
                raise LabelPolicyError(
                    f"label policy {value!r}: expected 'uncertain=0|1|ignore,blank=0|ignore'")
            parts[key] = val.strip()
        return cls(parts.get("uncertain", "0"), parts.get("blank", "0"))

    def __str__(self) -> str:
        return f"uncertain={self.uncertain},blank={self.blank}"

    def to_dict(self) -> dict:
        return {"uncertain": self.uncertain, "blank": self.blank}

    def describe(self) -> str:
        word = {"0": "negative (0)", "1": "positive (1)", "ignore": "left out of that label"}
        return (f"{self}: 1 positive, 0 negative; uncertain (-1) -> {word[self.uncertain]}; "
                f"blank -> {word[self.blank]}")

    def apply(self, values) -> np.ndarray:
        """Raw labels (1, 0, -1, NaN) -> float64 1 / 0 / NaN, NaN = left out of that label."""
        v = np.asarray(values, dtype=np.float64)
        blank = np.isnan(v)
        bad = ~blank & ~np.isin(v, (1.0, 0.0, -1.0))
        if bad.any():
            raise UserError("label values must be 1, 0, -1 or NaN (blank); found "
                             f"{sorted(set(v[bad].tolist()))[:5]}")
        out = v.copy()
        unc = v == -1.0
        out[unc] = np.nan if self.uncertain == "ignore" else float(self.uncertain)
        out[blank] = np.nan if self.blank == "ignore" else 0.0
        return out

    def targets(self, values) -> tuple[np.ndarray, np.ndarray]:
        """(target, mask) float32 for a masked loss: mask 0 where the label is left out."""
        y = self.apply(values)
        mask = ~np.isnan(y)
        return np.where(mask, y, 0.0).astype(np.float32), mask.astype(np.float32)

    def kept(self, values) -> np.ndarray:
        """Cases that enter each label (column counts of `apply(values)` not NaN)."""
        return (~np.isnan(self.apply(values))).sum(axis=0)


DEFAULT = LabelPolicy()
DEFAULT_TEXT = str(DEFAULT)


def from_legacy(uncertain_policy: str | None, unknown_policy: str | None) -> LabelPolicy:
    """The policy of an older classifier config (uncertain_policy ignore|zeros|ones,
    unknown_policy zeros|ignore; their defaults were ignore and zeros)."""
    return LabelPolicy(uncertain_policy or "ignore", unknown_policy or "zeros")
