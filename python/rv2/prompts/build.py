"""Manifest -> prompts table: one row per usable image, each prompt within the token window.

    df, stats = build_prompts(manifest_df, PromptsConfig())

Columns: the manifest's identity and demographic columns and the 14 labels
(generation copies them into its synthetic manifest), then `impression` (the
source text), `impression_short` (cleaned and fitted), `prompt`, `n_tokens`,
`shortened_by` (none | rule | llm) and `prompt_id`.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import re

import numpy as np
import pandas as pd

from rv2.data.manifest import validate
from rv2.data.report_sections import extract_impression, normalize_whitespace
from rv2.data.schema import CHEXPERT_LABELS
from rv2.data.views import describe_views, select_views
from rv2.errors import UserError
from rv2.prompts.config import PromptsConfig
from rv2.prompts.summarize import (
    RuleShortener,
    Summarizer,
    SummarizerError,
    make_summarizer,
)
from rv2.prompts.template import (
    PromptTemplate,
    canonical_age,
    canonical_race,
    canonical_sex,
    clean_impression,
)
from rv2.prompts.tokenizer import count_tokens

log = logging.getLogger(__name__)

CARRY_COLUMNS: tuple[str, ...] = ("image_id", "path", "patient_id", "study_id", "dataset", "view",
                                  "split", "sex", "age", "age_bin", "race")
PROMPT_COLUMNS: tuple[str, ...] = ("impression", "impression_short", "prompt", "n_tokens",
                                   "shortened_by", "prompt_id")
OUTPUT_COLUMNS: tuple[str, ...] = CARRY_COLUMNS + CHEXPERT_LABELS + PROMPT_COLUMNS
SHORTENED_BY: tuple[str, ...] = ("none", "rule", "llm")


def prompt_id(image_id: str, prompt: str) -> str:
    """Stable id of a built prompt: 16 hex digits of sha256(image id, prompt text)."""
    return hashlib.sha256(f"rv2-prompt\0{image_id}\0{prompt}".encode()).hexdigest()[:16]


def _missing(v) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and v != v) or \
        (isinstance(v, str) and not v.strip())


class ImpressionFitter:
    """Fits impressions into a token budget with a summarizer, recording the method.

    An LLM summary is used only when it fits; otherwise (or when the endpoint
    fails and `on_error` is "fallback") the deterministic shortener is applied
    to the source text, so every result fits.
    """

    def __init__(self, template: PromptTemplate, summarizer: Summarizer | None = None,
                 on_error: str = "fallback"):
        self.template = template
        self.summarizer = summarizer
        self.rule = RuleShortener()
        self.on_error = on_error
        self.stats = {"llm_errors": 0, "llm_overlong": 0}
        self._fit = functools.lru_cache(maxsize=200_000)(self._fit_uncached)

    def fit(self, text: str, budget: int) -> tuple[str, str]:
        """(formatted impression with count_tokens <= budget, method)."""
        return self._fit(text, int(budget))

    def _format_rule(self, text: str, budget: int) -> str:
        b = budget
        while True:
            out = self.template.format_impression(self.rule.summarize(text, b))
            n = count_tokens(out)
            if n <= budget or b <= 2:
                return out if n <= budget else ""
            b -= n - budget  # the final period added a token: ask for less

    def _fit_uncached(self, text: str, budget: int) -> tuple[str, str]:
        formatted = self.template.format_impression(text)
        if count_tokens(formatted) <= budget:
            return formatted, "none"
        if self.summarizer is not None and not isinstance(self.summarizer, RuleShortener):
            try:
                out = self.template.format_impression(self.summarizer.summarize(text, budget))
            except SummarizerError as exc:
                if self.on_error != "fallback":
                    raise
                self.stats["llm_errors"] += 1
                log.warning("summarizer failed, using the rule shortener: %s", exc)
            else:
                if out and count_tokens(out) <= budget:
                    return out, "llm"
                self.stats["llm_overlong"] += 1
        return self._format_rule(text, budget), "rule"


def _prefix_cost(template: PromptTemplate, age, race, sex) -> int | None:
    """Tokens the demographic part adds to the impression's count; None if not separable."""
    if not template.demographics_complete(age, race, sex):
        only = template.impression_only
        if only.count("{impression}") == 1 and (only == "{impression}"
                                                or only.endswith(" {impression}")):
            head = only[: -len("{impression}")].strip()
            return count_tokens(head) - 2 if head else 0
        return None
    prefix = template.render_prefix(age, race, sex)
    return None if prefix is None else count_tokens(prefix) - 2


def expansion_reserve(cfg: PromptsConfig) -> int:
    """The largest prefix cost over every expansion variant (configured sexes, races, ages)."""
    t, e = cfg.template, cfg.expand
    costs = [_prefix_cost(t, a, r, s) for s in e.sexes for r in e.races
             for a in range(e.age_min, e.age_max + 1)]
    return max((c for c in costs if c is not None), default=0)


def _source_impression(row: dict, source: str) -> str | None:
    imp = row.get("impression")
    if source in ("auto", "impression") and not _missing(imp):
        return normalize_whitespace(str(imp))
    if source in ("auto", "report") and not _missing(row.get("report")):
        return extract_impression(str(row["report"]))
    return None


def validate_input(df: pd.DataFrame, name: str = "manifest") -> None:
    """The manifest schema (rv2.data.manifest.validate) plus a text column to read."""

    validate(df, name)
    if "impression" not in df.columns and "report" not in df.columns:
        raise UserError(f"{name}: needs an 'impression' or a 'report' column to build prompts")


def build_prompts(manifest_df: pd.DataFrame, cfg: PromptsConfig | None = None, *,
                  summarizer: Summarizer | None = None, progress: bool = False,
                  name: str = "manifest") -> tuple[pd.DataFrame, dict]:
    """One prompt per usable manifest row; returns (prompts table, counts)."""
    cfg = cfg or PromptsConfig()
    validate_input(manifest_df, name)
    given = manifest_df
    manifest_df = select_views(manifest_df, cfg.views, name=name, what="prompts")
    template = cfg.template
    if summarizer is None:
        summarizer = make_summarizer(cfg.fit.summarizer, cfg.fit.llm)
    fitter = ImpressionFitter(template, summarizer, cfg.fit.llm.on_error)
    nondesc = [re.compile(p) for p in cfg.nondescriptive]
    reserve = expansion_reserve(cfg) if cfg.fit.reserve_for_expansion else 0
    max_tokens = cfg.fit.max_tokens

    stats: dict = {"rows_in": len(given), "views": describe_views(cfg.views, given, manifest_df),
                   "dropped": {"other_view": len(given) - len(manifest_df), "no_impression": 0,
                               "nondescriptive": 0, "missing_demographics": 0},
                   "missing": {"sex": 0, "age": 0, "race": 0}, "impression_only": 0}
    rows = manifest_df.to_dict("records")
    it = rows
    if progress:
        from tqdm import tqdm

        it = tqdm(rows, desc="prompts", unit="row")
    out = []
    prefix_costs: dict = {}
    imp_costs: dict[str, int] = {}
    for row in it:
        raw = _source_impression(row, cfg.impression_source)
        text = clean_impression(raw, cfg.deid) if raw else ""
        if not text:
            stats["dropped"]["no_impression"] += 1
            continue
        key = text.lower().rstrip(" .")
        if any(p.search(key) for p in nondesc):
            stats["dropped"]["nondescriptive"] += 1
            continue
        age, race, sex = canonical_age(row.get("age")), canonical_race(row.get("race")), \
            canonical_sex(row.get("sex"))
        complete = age is not None and race is not None and sex is not None
        if not complete:
            for k, v in (("sex", sex), ("age", age), ("race", race)):
                stats["missing"][k] += v is None
            if not cfg.allow_missing_demographics:
                stats["dropped"]["missing_demographics"] += 1
                continue
            stats["impression_only"] += 1
        dkey = (age, race, sex) if complete else None
        if dkey not in prefix_costs:
            prefix_costs[dkey] = _prefix_cost(template, age, race, sex)
        cost = prefix_costs[dkey]
        budget = max_tokens - max(cost if cost is not None else 0, reserve if complete else 0)
        while True:
            short, method = fitter.fit(text, budget)
            prompt = template.render(short, age, race, sex) if short else ""
            if not prompt:
                n = 0
            elif cost is not None:  # separable template: counts add up (tested against exact)
                if short not in imp_costs:
                    imp_costs[short] = count_tokens(short)
                n = cost + imp_costs[short]
            else:
                n = count_tokens(prompt)
            if n <= max_tokens or budget <= 2:
                break
            budget -= n - max_tokens  # a template whose parts do not add up exactly
        if not short or n > max_tokens:
            stats["dropped"]["no_impression"] += 1
            continue
        rec = {c: row.get(c) for c in CARRY_COLUMNS + CHEXPERT_LABELS}
        rec.update(impression=raw, impression_short=short, prompt=prompt, n_tokens=n,
                   shortened_by=method, prompt_id=prompt_id(str(row["image_id"]), prompt))
        out.append(rec)

    df = pd.DataFrame(out, columns=list(OUTPUT_COLUMNS))
    df["n_tokens"] = df["n_tokens"].astype("int64")
    for c in CHEXPERT_LABELS:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    df["age"] = pd.to_numeric(df["age"], errors="coerce").astype("float64")
    stats["rows_out"] = len(df)
    stats["shortened_by"] = {m: int((df["shortened_by"] == m).sum()) for m in SHORTENED_BY}
    stats.update(fitter.stats)
    stats["n_tokens"] = token_summary(df["n_tokens"].to_numpy())
    if hasattr(summarizer, "calls"):
        stats["llm_calls"] = int(summarizer.calls)
        stats["llm_cache_hits"] = int(summarizer.cache_hits)
    return df, stats


def token_summary(n: np.ndarray) -> dict:
    if len(n) == 0:
        return {"min": None, "median": None, "p95": None, "max": None}
    return {"min": int(n.min()), "median": float(np.median(n)),
            "p95": float(np.percentile(n, 95)), "max": int(n.max())}
