"""The prompt template `<AGE> year old <RACE> <SEX>. <IMPRESSION>` and impression cleaning.

The defaults reproduce the authors' demo prompts character for character
(`86 year old BLACK female. No evidence of acute cardiopulmonary process .`):
race in capitals, sex as a lower-case word, a space before the final period.
"""
from __future__ import annotations

import dataclasses
import html
import re
from typing import Literal

from rv2.data.report_sections import _PLACEHOLDER, normalize_whitespace
from rv2.data.schema import STUDY_RACES
from rv2.errors import UserError

_RACE_BY_KEY = {r.lower(): r for r in STUDY_RACES}
_SEX_ALIASES = {"f": "F", "female": "F", "woman": "F", "m": "M", "male": "M", "man": "M"}


def canonical_race(value) -> str | None:
    """'WHITE', 'white', 'White' -> 'White'; None for missing or a race outside the four groups."""
    if not isinstance(value, str):
        return None
    return _RACE_BY_KEY.get(value.strip().lower())


def canonical_sex(value) -> str | None:
    """'F'/'female' -> 'F', 'M'/'male' -> 'M'; None otherwise."""
    if not isinstance(value, str):
        return None
    return _SEX_ALIASES.get(value.strip().lower())


def canonical_age(value) -> int | None:
    """An age as a whole number of years (rounded), None when missing or not a number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    if f != f or f < 0:
        return None
    return int(round(f))


@dataclasses.dataclass
class PromptTemplate:
    """How demographics and an impression become a prompt (all details are settings)."""

    text: str = "{age} year old {race} {sex}. {impression}"
    # Used where demographics are missing and allowed (OpenI has no sex or race).
    impression_only: str = "{impression}"
    race_case: Literal["upper", "lower", "title", "as_is"] = "upper"
    sex_words: dict[str, str] = dataclasses.field(
        default_factory=lambda: {"F": "female", "M": "male"})
    space_before_final_period: bool = True
    # Add a final period to an impression that ends without one.
    final_period: bool = True

    def race_word(self, race: str) -> str:
        canon = canonical_race(race)
        if canon is None:
            raise UserError(f"race {race!r} is not one of {list(STUDY_RACES)}")
        return {"upper": canon.upper(), "lower": canon.lower(), "title": canon,
                "as_is": race.strip()}[self.race_case]

    def sex_word(self, sex: str) -> str:
        canon = canonical_sex(sex)
        if canon is None or canon not in self.sex_words:
            raise UserError(f"sex {sex!r} is not one of {sorted(self.sex_words)}")
        return self.sex_words[canon]

    def format_impression(self, impression: str) -> str:
        """Whitespace normalized; trailing periods/commas folded into one final period,
        written with or without the space before it."""
        imp = normalize_whitespace(impression)
        if not imp:
            return ""
        if imp[-1] in "?!":
            return imp
        core = re.sub(r"[\s.,;:]+$", "", imp)
        if not core:
            return ""
        ended = bool(re.search(r"\.\s*$", imp))
        if not (ended or self.final_period):
            return core
        return core + (" ." if self.space_before_final_period else ".")

    def demographics_complete(self, age, race, sex) -> bool:
        return (canonical_age(age) is not None and canonical_race(race) is not None
                and canonical_sex(sex) is not None)

    def prefix_and_joint(self) -> tuple[str, str] | None:
        """(format before the impression, joint) when the template ends with the impression
        after a space, which makes token counts additive; else None."""
        if self.text.count("{impression}") == 1 and self.text.endswith(" {impression}"):
            return self.text[: -len(" {impression}")], " "
        return None

    def render(self, impression: str, age=None, race=None, sex=None) -> str:
        """The prompt; the impression-only form where any demographic is missing."""
        imp = self.format_impression(impression)
        if not self.demographics_complete(age, race, sex):
            return self.impression_only.format(impression=imp)
        return self.text.format(age=canonical_age(age), race=self.race_word(race),
                                sex=self.sex_word(sex), impression=imp)

    def render_prefix(self, age, race, sex) -> str | None:
        """The demographic part alone (for token budgeting), None if not separable."""
        parts = self.prefix_and_joint()
        if parts is None or not self.demographics_complete(age, race, sex):
            return None
        return parts[0].format(age=canonical_age(age), race=self.race_word(race),
                               sex=self.sex_word(sex))


# ------------------------------------------------------------ impression cleaning

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[\"'])")
_ABBREV = re.compile(r"(?:\b(?:Dr|Drs|Mr|Mrs|Ms|vs|approx|e\.g|i\.e|St|cf|etc)\.|\b[A-Z]\.)$")
# A list marker: "1." or "2)" at the start or right after a sentence end.
_ENUM = re.compile(r"(?:(?<=[.!?:;] )|^)\(?\d{1,2}[.)]\s+")


def split_sentences(text: str) -> list[str]:
    """Sentences of an impression; list markers ("1.", "2)") end a sentence and are dropped."""
    text = normalize_whitespace(text)
    if not text:
        return []
    # A list marker starts a new sentence.
    text = _ENUM.sub("\n", text)
    out: list[str] = []
    for chunk in text.split("\n"):
        pending = ""
        for piece in _SENTENCE_END.split(chunk):
            pending = f"{pending} {piece}".strip() if pending else piece.strip()
            if pending and not _ABBREV.search(pending):
                out.append(pending)
                pending = ""
        if pending:
            out.append(pending)
    return [s for s in (p.strip() for p in out) if s and re.search(r"[A-Za-z0-9]", s)]


def _tidy(text: str) -> str:
    text = re.sub(r"\(\s*\)", "", text)
    text = re.sub(r"\s+([,.;:])", r"\1", text)
    text = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", text)
    text = re.sub(r"(?<=[.;:])\s*[,;:]", "", text)
    text = re.sub(r"[,;:]+(?=\.)", "", text)
    text = re.sub(r"^[\s,.;:/-]+", "", text)
    text = normalize_whitespace(text)
    # A sentence whose first word was a placeholder starts in lower case now.
    def cap(m):
        after_abbrev = _ABBREV.search(text[:m.start(2)].rstrip())
        return m.group(1) + (m.group(2) if after_abbrev else m.group(2).upper())

    return re.sub(r"(^|[.!?] )([a-z])", cap, text)


def clean_impression(text: str | None, deid: str = "remove") -> str:
    """Normalize an impression and handle de-identification placeholders.

    deid: "keep" leaves "___"/"XXXX" as they are; "remove" deletes them and
    tidies the punctuation they leave ("x-XXXX", OpenI's scrubbed "x-ray",
    becomes "x-ray"); "drop_sentence" drops every sentence holding one.
    Returns "" when nothing is left.
    """
    if text is None or (isinstance(text, float) and text != text):
        return ""
    # OpenI holds doubly escaped entities ("&amp;gt;" -> "&gt;"): write the character.
    text = normalize_whitespace(html.unescape(str(text)))
    if deid == "keep" or not _PLACEHOLDER.search(text):
        return text
    if deid == "remove":
        text = re.sub(r"\b([Xx])-XXXX\b", r"\1-ray", text)
        text = _PLACEHOLDER.sub(" ", text)
        # Leftover "and/or" stubs and dangling hyphens at a removed word.
        text = re.sub(r"(\w)-(?=[\s.,;:]|$)", r"\1", text)
        return _tidy(text)
    if deid == "drop_sentence":
        return " ".join(s for s in split_sentences(text) if not _PLACEHOLDER.search(s))
    raise UserError(f"deid must be keep, remove or drop_sentence, got {deid!r}")
