"""Balanced expansion: 8 variants per prompt, ages in the window, deterministic, resumable ids."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from rv2.data.schema import age_bin
from rv2.prompts.build import build_prompts
from rv2.prompts.config import PromptsConfig
from rv2.prompts.expand import EXPAND_COLUMNS, expand_prompts, variant_prompt_id
from rv2.prompts.tokenizer import count_tokens

VARIANTS = ["female-Asian", "female-Black", "female-Hispanic", "female-White",
            "male-Asian", "male-Black", "male-Hispanic", "male-White"]


@pytest.fixture(scope="module")
def built(make_manifest):
    rows = [
        {"image_id": "young", "sex": "F", "age": 20.0, "race": "White",
         "impression": "Small left pleural effusion."},
        {"image_id": "old", "sex": "M", "age": 91.0, "race": "Black", "impression": "Cardiomegaly."},
        {"image_id": "mid", "sex": "M", "age": 55.0, "race": "Asian", "impression": "No edema."},
        {"image_id": "val", "sex": "F", "age": 45.0, "race": "Asian", "impression": "Clear.",
         "split": "validate"},
    ]
    df, _ = build_prompts(make_manifest(rows))
    return df


def test_eight_variants_with_ages_in_window(built):
    stats = {}
    ex = expand_prompts(built, PromptsConfig(), stats=stats)
    assert list(ex.columns)[:len(EXPAND_COLUMNS)] == list(EXPAND_COLUMNS)
    assert stats["selected"] == 3 and stats["rows_out"] == 24  # the validate row is not expanded
    assert stats["per_variant"] == {v: 3 for v in VARIANTS}
    src = built.set_index("prompt_id")
    for _, r in ex.iterrows():
        s = src.loc[r["source_prompt_id"]]
        assert r["variant"] == f"{ {'F': 'female', 'M': 'male'}[r['sex']]}-{r['race']}".replace(" ", "")
        assert max(18, round(s["age"]) - 5) <= r["age"] <= min(90, round(s["age"]) + 5)
        assert r["age_bin"] == age_bin(r["age"])
        assert r["prompt"] == (f"{r['age']} year old {r['race'].upper()} "
                               f"{ {'F': 'female', 'M': 'male'}[r['sex']]}. {s['impression_short']}")
        assert r["n_tokens"] == count_tokens(r["prompt"]) <= 77  # additive count == exact
        assert r["prompt_id"] == variant_prompt_id(r["source_prompt_id"], r["variant"])
        assert r["image_id"] == s["image_id"] and r["path"] == s["path"]
    assert ex["prompt_id"].is_unique
    assert ex[ex.image_id == "young"]["age"].min() >= 18
    assert ex[ex.image_id == "old"]["age"].max() <= 90
    assert ex["age"].dtype == np.int64


def test_deterministic_order_independent_and_seeded(built):
    cfg = PromptsConfig().override(["expand.seed=7", "expand.splits=[]"])
    a = expand_prompts(built, cfg).set_index("prompt_id")
    b = expand_prompts(built.iloc[::-1], cfg).set_index("prompt_id")
    pd.testing.assert_series_equal(a["age"], b.loc[a.index, "age"])
    sub = expand_prompts(built.iloc[[1]], cfg).set_index("prompt_id")
    assert (sub["age"] == a.loc[sub.index, "age"]).all()  # a subset draws the same ages
    other = expand_prompts(built, cfg.override(["expand.seed=8"])).set_index("prompt_id")
    assert other.index.equals(a.index)  # ids: (source, variant) only
    assert (other["age"] != a["age"]).any()
    assert len(a) == 32
    wide = expand_prompts(built, cfg.override(["expand.age_jitter=30"]))
    assert wide["age"].between(18, 90).all() and wide["age"].nunique() > 10


def test_refits_when_built_without_reserve(make_manifest):
    # A template whose race words are long; built without the reserve, expansion re-fits.
    imp = " ".join(f"Finding {i} small nodule left lung." for i in range(11))
    cfg = PromptsConfig().override(["fit.reserve_for_expansion=false",
                                    "template.race_case=as_is", "expand.races=[White]"])
    df, _ = build_prompts(make_manifest([{"image_id": "x", "sex": "F", "age": 50.0,
                                          "race": "White", "impression": imp}]), cfg)
    assert df["n_tokens"].iloc[0] <= 77
    ten = " ".join(["female"] * 10)
    cfg2 = cfg.override([f"template.sex_words={{F: {ten}, M: {ten}}}"])
    stats = {}
    ex = expand_prompts(df, cfg2, stats=stats)
    assert (ex["n_tokens"] <= 77).all() and stats["refitted"] >= 1
    assert (ex["shortened_by"] == "rule").all()


def test_rows_without_age_skipped_and_bad_input(built):
    t = built.copy()
    t.loc[0, "age"] = np.nan
    stats = {}
    ex = expand_prompts(t, PromptsConfig(), stats=stats)
    assert stats["skipped_no_age"] == 1 and len(ex) == 16
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['impression_short'\]"):
        expand_prompts(built.drop(columns=["impression_short"]))
    with pytest.raises(ValueError, match="unknown values"):
        expand_prompts(built, PromptsConfig().override(["expand.races=[Martian]"]))


def test_ids_and_draws_are_pinned():
    """Resuming a regeneration relies on these never changing between rv2 versions."""
    from rv2.prompts.build import prompt_id
    from rv2.prompts.expand import draw_age

    assert prompt_id("demo0002", "86 year old BLACK female. No evidence of acute "
                     "cardiopulmonary process .") == "ec316bc72e7bd49f"
    assert variant_prompt_id("0123456789abcdef", "female-Asian") == "da2a7e83af9c8f49"
    assert [draw_age(60, 5, 0, "0123456789abcdef", v) for v in ("female-Asian", "male-White")] \
        == [55, 60]
    assert draw_age(20, 5, 1, "x", "male-Black") == 18 and draw_age(89, 5, 1, "x", "male-Black") == 86


def test_age_draws_are_uniform_over_the_window():
    from rv2.prompts.expand import draw_age

    offsets = [draw_age(50, 5, 0, f"src{i}", v) - 50 for i in range(500) for v in VARIANTS]
    counts = np.bincount(np.array(offsets) + 5, minlength=11)
    assert len(counts) == 11 and counts.sum() == 4000
    expected = 4000 / 11
    assert (np.abs(counts - expected) < 0.25 * expected).all(), counts


def test_non_separable_template_is_counted_exactly(make_manifest):
    # The impression in the middle: token counts are not additive; every prompt still fits.
    imp = " ".join(f"Finding {i} small nodule left lung." for i in range(11))
    from rv2.prompts.template import PromptTemplate

    cfg = PromptsConfig(template=PromptTemplate(
        text="Chest radiograph: {impression} Patient: {age} year old {race} {sex}."))
    df, _ = build_prompts(make_manifest([{"image_id": "x", "sex": "F", "age": 50.0,
                                          "race": "White", "impression": imp}]), cfg)
    assert df["prompt"].iloc[0].startswith("Chest radiograph: Finding 0 small nodule")
    assert df["prompt"].iloc[0].endswith("Patient: 50 year old WHITE female.")
    ex = expand_prompts(df, cfg)
    assert len(ex) == 8
    assert ex["n_tokens"].tolist() == [count_tokens(p) for p in ex["prompt"]]
    assert (ex["n_tokens"] <= 77).all()


def test_expanded_table_is_what_generation_reads(built):
    """Contract with the generate stage: its loader accepts the expanded table as written."""
    pipeline = pytest.importorskip("rv2.generate.pipeline")
    ex = expand_prompts(built, PromptsConfig())
    loaded = pipeline.load_prompts(ex)
    assert len(loaded) == 24 and set(loaded["race"]) == {"Asian", "Black", "Hispanic", "White"}
