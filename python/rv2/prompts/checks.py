"""Checks of a prompts table before images are generated from it.

QC enforces a row's `sex`, `race` and `age` columns, so a prompt whose text asks
for something else would give an image that answers one request and is labelled
with another; a prompt over CLIP's 77 tokens is cut by the text encoder, so its
end is never drawn; an age outside the schema's range spends every attempt and
fails. `check_generation_prompts` refuses all three (long prompts only warned
about with `allow_long`), naming the rows.
"""
from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd

from rv2.data.demographics import DemographicsError, check_demographics
from rv2.data.schema import STUDY_RACES
from rv2.errors import UserError
from rv2.prompts.template import canonical_race, canonical_sex
from rv2.prompts.tokenizer import MAX_LENGTH, count_tokens_batch

log = logging.getLogger("rv2.prompts")

# The demographic prefix of the default template, in any case and sex spelling:
# "86 year old BLACK female. ...", "40 year old white M. ..."
PREFIX = re.compile(r"^\s*(\d{1,3})\s+years?\s+old\s+(\w+)\s+(\w+)\s*\.", re.IGNORECASE)


class PromptCheckError(UserError):
    """A prompts table that generation would answer wrongly."""


def parse_prefix(prompt: str) -> tuple[int, str, str] | None:
    """(age, race, sex) of a prompt that starts with the template's demographic
    prefix, canonical spellings; None when it does not follow the template."""
    m = PREFIX.match(prompt or "")
    if not m:
        return None
    race, sex = canonical_race(m.group(2)), canonical_sex(m.group(3))
    if race is None or sex is None:
        return None
    return int(m.group(1)), race, sex


def _rows(ids, idx, limit: int = 5) -> str:
    shown = ", ".join(f"{i} ({ids[i]})" for i in idx[:limit])
    return f"(0-based) {shown}" + (f" and {len(idx) - limit} more" if len(idx) > limit else "")


def check_generation_prompts(df: pd.DataFrame, name: str, *, allow_long: bool = False,
                             max_tokens: int = MAX_LENGTH) -> pd.DataFrame:
    """The table with sex, race and age in the schema's spelling; PromptCheckError for
    ages out of range or missing, demographics outside the study's groups, prompt
    text contradicting its row, or prompts over `max_tokens` (unless `allow_long`:
    then a warning with the count and examples)."""
    try:
        df = check_demographics(df, name, races=STUDY_RACES, columns=("sex", "race", "age"),
                                id_column="prompt_id", require=("sex", "race", "age"))
    except DemographicsError as exc:
        raise PromptCheckError(str(exc)) from None
    ids = df["prompt_id"].astype(str).to_numpy()
    prompts = df["prompt"].astype(str).tolist()
    ages = df["age"].to_numpy(dtype=float)
    sexes = df["sex"].astype(str).to_numpy()
    races = df["race"].astype(str).to_numpy()
    clash, what = [], []
    for i, p in enumerate(prompts):
        parsed = parse_prefix(p)
        if parsed is None:
            continue
        age, race, sex = parsed
        diff = [f"{k} {got!r} vs column {want!r}" for k, got, want in
                (("sex", sex, sexes[i]), ("race", race, races[i])) if got != want]
        if abs(age - ages[i]) >= 1:
            diff.append(f"age {age} vs column {ages[i]:g}")
        if diff:
            clash.append(i)
            what.append("; ".join(diff))
    if clash:
        raise PromptCheckError(
            f"{name}: {len(clash)} prompt(s) ask for other demographics than their row's "
            f"sex/race/age columns, which QC enforces (first: row {clash[0]} "
            f"({ids[clash[0]]}): {what[0]}); rows {_rows(ids, clash)}. Rebuild the table with "
            "`rv2 prompts expand`, or make text and columns agree")
    n = np.array(count_tokens_batch(prompts))
    long_ = np.flatnonzero(n > max_tokens)
    if len(long_):
        examples = ", ".join(f"{ids[i]} ({n[i]} tokens)" for i in long_[:3])
        msg = (f"{name}: {len(long_)} prompt(s) are longer than {max_tokens} CLIP tokens and "
               f"would be cut by the text encoder (e.g. {examples})")
        if not allow_long:
            raise PromptCheckError(f"{msg}; shorten them with `rv2 prompts build/expand` (which "
                                   "fit prompts to 77 tokens), or pass --allow-long-prompts")
        log.warning("%s; generating from the first %d tokens (--allow-long-prompts)", msg,
                    max_tokens)
    return df


__all__ = ["PromptCheckError", "check_generation_prompts", "parse_prefix", "PREFIX"]
