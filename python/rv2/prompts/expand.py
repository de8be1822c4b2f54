"""Balanced demographic expansion: every source prompt x 2 sexes x 4 races.

The age of each variant is drawn uniformly (whole years) in
[age - jitter, age + jitter] and clipped to [age_min, age_max]. The draw of a
variant depends only on (seed, source prompt id, variant), never on row order,
so a subset or a re-run gives the same rows; `prompt_id` hashes
(source prompt id, variant) so that regeneration can resume by id.
"""
from __future__ import annotations

import hashlib

import pandas as pd

from rv2.data.demographics import check_demographics
from rv2.data.schema import AGE_RANGE, age_bin
from rv2.errors import UserError
from rv2.prompts.build import OUTPUT_COLUMNS, ImpressionFitter, _prefix_cost
from rv2.prompts.config import PromptsConfig
from rv2.prompts.template import canonical_age, canonical_race, canonical_sex
from rv2.prompts.tokenizer import count_tokens

EXPAND_COLUMNS: tuple[str, ...] = OUTPUT_COLUMNS + ("source_prompt_id", "variant")


def variant_name(sex: str, race: str, sex_words: dict[str, str] | None = None) -> str:
    """'F', 'Asian' -> 'female-Asian'."""
    words = sex_words or {"F": "female", "M": "male"}
    return f"{words[canonical_sex(sex)]}-{canonical_race(race)}"


def variant_prompt_id(source_prompt_id: str, variant: str) -> str:
    return hashlib.sha256(f"rv2-variant\0{source_prompt_id}\0{variant}".encode()).hexdigest()[:16]


def draw_age(age: int, jitter: int, seed: int, source_prompt_id: str, variant: str,
             lo: int = 18, hi: int = 90) -> int:
    # Uniform over the 2*jitter+1 whole years from 64 hashed bits (bias < 1e-17).
    digest = hashlib.sha256(f"{seed}\0{source_prompt_id}\0{variant}".encode()).digest()
    drawn = age - jitter + int.from_bytes(digest[:8], "little") % (2 * jitter + 1)
    return min(max(drawn, lo), hi)


def expand_prompts(df: pd.DataFrame, cfg: PromptsConfig | None = None, *,
                   progress: bool = False, stats: dict | None = None,
                   name: str = "prompts table") -> pd.DataFrame:
    """8 variants (configurable) per source row of the selected splits.

    Source rows without an age cannot be centred and are skipped (counted in
    `stats["skipped_no_age"]` when a dict is passed)."""
    cfg = cfg or PromptsConfig()
    e, template = cfg.expand, cfg.template
    missing = [c for c in ("prompt_id", "impression_short", "age", "split") if c not in df.columns]
    if missing:
        raise UserError(f"prompts table lacks column(s) {missing}; expand reads the output of "
                         "`rv2 prompts build` or `rv2 prompts import-csv`")
    df = check_demographics(df, name, id_column="prompt_id")
    lo, hi = AGE_RANGE
    if e.age_jitter < 0 or e.age_min > e.age_max or e.age_min < lo or e.age_max > hi:
        raise UserError(f"bad expansion window: age_jitter={e.age_jitter}, "
                         f"age range [{e.age_min}, {e.age_max}] (the schema allows [{lo}, {hi}])")
    bad_sex = [s for s in e.sexes if canonical_sex(s) is None]
    bad_race = [r for r in e.races if canonical_race(r) is None]
    if bad_sex or bad_race:
        raise UserError(f"expand.sexes/races hold unknown values {bad_sex + bad_race}")
    src = df if not e.splits else df[df["split"].isin(list(e.splits))]
    counts = {"rows_in": len(df), "selected": len(src), "skipped_no_age": 0,
              "refitted": 0}
    fitter = ImpressionFitter(template)
    variants = [(canonical_sex(s), canonical_race(r)) for s in e.sexes for r in e.races]
    names = [variant_name(s, r, template.sex_words) for s, r in variants]
    imp_cost: dict[str, int] = {}
    pre_cost: dict[tuple, int | None] = {}
    records = src.to_dict("records")
    it = records
    if progress:
        from tqdm import tqdm

        it = tqdm(records, desc="expand", unit="prompt")
    out = []
    for row in it:
        age0 = canonical_age(row.get("age"))
        if age0 is None:
            counts["skipped_no_age"] += 1
            continue
        sid = str(row["prompt_id"])
        short0 = str(row["impression_short"])
        for (sex, race), name in zip(variants, names):
            age = draw_age(age0, e.age_jitter, e.seed, sid, name, e.age_min, e.age_max)
            short, method = short0, row.get("shortened_by") or "none"
            prompt = template.render(short, age, race, sex)
            # Token count without re-encoding: the prefix and impression add up
            # where the template ends with " {impression}" (checked in tests).
            key = (age, race, sex)
            if key not in pre_cost:
                pre_cost[key] = _prefix_cost(template, age, race, sex)
            if pre_cost[key] is not None:
                if short not in imp_cost:
                    imp_cost[short] = count_tokens(template.format_impression(short))
                n = pre_cost[key] + imp_cost[short]
            else:
                n = count_tokens(prompt)
            if n > cfg.fit.max_tokens:
                # Built without the expansion reserve: shorten for this variant.
                budget = cfg.fit.max_tokens - (pre_cost[key] or 0)
                while True:
                    short, m = fitter.fit(short0, budget)
                    prompt = template.render(short, age, race, sex)
                    n = count_tokens(prompt)
                    if n <= cfg.fit.max_tokens or budget <= 2:
                        break
                    budget -= n - cfg.fit.max_tokens  # a template whose parts do not add up
                method = m if m != "none" else method
                counts["refitted"] += 1
            rec = dict(row)
            rec.update(sex=sex, race=race, age=age, age_bin=age_bin(age), impression_short=short,
                       prompt=prompt, n_tokens=n, shortened_by=method,
                       prompt_id=variant_prompt_id(sid, name), source_prompt_id=sid, variant=name)
            out.append(rec)
    extra = [c for c in df.columns if c not in EXPAND_COLUMNS]
    result = pd.DataFrame(out, columns=list(EXPAND_COLUMNS) + extra)
    result["age"] = result["age"].astype("int64")
    result["n_tokens"] = result["n_tokens"].astype("int64")
    counts["rows_out"] = len(result)
    counts["per_variant"] = {n: int((result["variant"] == n).sum()) for n in names}
    if stats is not None:
        stats.update(counts)
    return result
