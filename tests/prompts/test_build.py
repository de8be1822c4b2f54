"""`build_prompts`: manifest rows -> prompts within 77 tokens, with counts of what was left out."""
from __future__ import annotations

import numpy as np
import pytest
from rv2.data.manifest import ManifestError
from rv2.prompts.build import OUTPUT_COLUMNS, build_prompts, prompt_id
from rv2.prompts.config import PromptsConfig
from rv2.prompts.template import PromptTemplate, clean_impression
from rv2.prompts.tokenizer import count_tokens

REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)
 INDICATION:  ___F with cough
 FINDINGS:  Lungs are clear.
 IMPRESSION:
 No acute cardiopulmonary process.
"""


def _rows():
    return [
        {"image_id": "a", "sex": "F", "age": 86.0, "race": "Black", "Cardiomegaly": 1.0,
         "impression": "No evidence of acute cardiopulmonary process."},
        {"image_id": "b", "sex": "M", "age": 60.0, "race": "White", "report": REPORT},
        {"image_id": "c", "sex": "M", "age": 50.0, "race": None, "impression": "Small effusion."},
        {"image_id": "d", "sex": "F", "age": 40.0, "race": "Other", "impression": "Normal chest."},
        {"image_id": "e", "sex": "F", "age": 30.0, "race": "Asian", "impression": "See above."},
        {"image_id": "f", "sex": "F", "age": np.nan, "race": "Asian", "impression": "   "},
        {"image_id": "g", "sex": None, "age": 70.0, "race": "Hispanic",
         "impression": "XXXX right upper lobe granuloma."},
    ]


def test_build_small_manifest(make_manifest):
    df, stats = build_prompts(make_manifest(_rows()))
    assert list(df.columns) == list(OUTPUT_COLUMNS)
    assert df["image_id"].tolist() == ["a", "b"]
    a, b = df.iloc[0], df.iloc[1]
    assert a["prompt"] == "86 year old BLACK female. No evidence of acute cardiopulmonary process ."
    assert a["impression"] == "No evidence of acute cardiopulmonary process."
    assert a["impression_short"] == "No evidence of acute cardiopulmonary process ."
    assert a["n_tokens"] == 19 and a["shortened_by"] == "none"
    assert a["Cardiomegaly"] == 1.0 and np.isnan(a["Edema"]) and a["path"] == "files/a.jpg"
    assert a["prompt_id"] == prompt_id("a", a["prompt"]) and len(a["prompt_id"]) == 16
    assert b["prompt"] == "60 year old WHITE male. No acute cardiopulmonary process ."  # from the report
    assert stats["rows_in"] == 7 and stats["rows_out"] == 2
    assert stats["dropped"] == {"other_view": 0, "no_impression": 1, "nondescriptive": 1,
                                "missing_demographics": 3}
    assert stats["missing"] == {"sex": 1, "age": 0, "race": 2}
    # Stable ids: the same input gives the same ids; another template another id.
    again, _ = build_prompts(make_manifest(_rows()))
    assert again["prompt_id"].tolist() == df["prompt_id"].tolist()
    titled, _ = build_prompts(make_manifest(_rows()), PromptsConfig().override(["template.race_case=title"]))
    assert titled["prompt"].iloc[0].startswith("86 year old Black female.")
    assert titled["prompt_id"].iloc[0] != df["prompt_id"].iloc[0]


def test_allow_missing_demographics_keeps_impression_only(make_manifest):
    cfg = PromptsConfig(allow_missing_demographics=True)
    df, stats = build_prompts(make_manifest(_rows()), cfg)
    assert df["image_id"].tolist() == ["a", "b", "c", "d", "g"]
    by = df.set_index("image_id")["prompt"]
    assert by["c"] == "Small effusion ." and by["d"] == "Normal chest ."
    assert by["g"] == "Right upper lobe granuloma ."  # placeholder removed (default deid)
    assert stats["impression_only"] == 3
    keep, _ = build_prompts(make_manifest(_rows()), cfg.override(["deid=keep"]))
    assert keep.set_index("image_id")["prompt"]["g"] == "XXXX right upper lobe granuloma ."


def test_bad_manifests_are_named(make_manifest):
    m = make_manifest(_rows()).drop(columns=["race"])
    with pytest.raises(ManifestError, match=r"my\.parquet: missing column\(s\) \['race'\]"):
        build_prompts(m, name="my.parquet")
    dup = make_manifest(_rows()[:2] + [dict(_rows()[0])])
    with pytest.raises(ManifestError, match="duplicate image_id"):
        build_prompts(dup)


def test_openi_all_impressions_fit_and_shortener_only_where_needed(openi_reports, make_manifest):
    rows = [{"image_id": f"CXR{r['report_id']}", "impression": r["sections"]["impression"]}
            for r in openi_reports]
    cfg = PromptsConfig(allow_missing_demographics=True)  # OpenI has no sex or race
    df, stats = build_prompts(make_manifest(rows, dataset="openi"), cfg)
    assert stats["rows_out"] == 3921 and stats["dropped"]["no_impression"] == 34
    assert df["n_tokens"].max() <= 77 and df["n_tokens"].min() >= 3
    assert df["prompt_id"].is_unique
    t = PromptTemplate()
    full = [count_tokens(t.format_impression(clean_impression(x))) for x in df["impression"]]
    needed = np.array(full) > 77
    assert (df["shortened_by"] == "rule").to_numpy().tolist() == needed.tolist()
    assert 50 <= needed.sum() <= 78  # 78 raw impressions exceed 77; placeholders removed first
    exact = [count_tokens(p) for p in df["prompt"]]
    assert exact == df["n_tokens"].tolist()


def test_openi_with_demographics_reserves_room_for_expansion(openi_reports, make_manifest):
    rng = np.random.default_rng(0)
    long = [r for r in openi_reports if r["impression"] and len(r["impression"]) > 300][:40]
    rows = [{"image_id": r["report_id"], "impression": r["impression"], "sex": "F",
             "age": float(rng.integers(18, 91)), "race": "White"} for r in long]
    df, stats = build_prompts(make_manifest(rows))
    assert stats["rows_out"] == len(long)
    t = PromptTemplate()
    # Every prefix of the 8 variants costs 7 tokens ("90 year old hispanic female ."): the
    # impression gets 70 with start/end, and is shortened exactly when it needs more.
    need = [count_tokens(t.format_impression(clean_impression(r["impression"]))) > 70 for r in long]
    assert (df["shortened_by"] == "rule").tolist() == need and sum(need) >= 10
    for _, r in df.iterrows():
        for race in ("Asian", "Black", "Hispanic", "White"):
            for sex in ("F", "M"):
                assert count_tokens(t.render(r["impression_short"], 90, race, sex)) <= 77


@pytest.mark.parametrize("deid, reason", [("keep", "nondescriptive"), ("remove", "no_impression")])
def test_placeholder_only_impression_is_left_out(make_manifest, deid, reason):
    rows = [{"image_id": "n", "sex": "F", "age": 50.0, "race": "White", "report": REPORT.replace(
        "No acute cardiopulmonary process.", "___")},
        {"image_id": "s", "sex": "F", "age": 50.0, "race": "White", "impression": "See findings."}]
    df, stats = build_prompts(make_manifest(rows), PromptsConfig(deid=deid))
    assert len(df) == 0 and stats["dropped"][reason] >= 1 and stats["dropped"]["nondescriptive"] >= 1


def test_views_all_warns_once_on_mixed_views_and_pa_filters(make_manifest, caplog):
    rows = [{**r, "view": v} for r, v in zip(_rows(), ["PA", "AP", "PA", "LATERAL", "PA", "PA", None])]
    df = make_manifest(rows)
    with caplog.at_level("WARNING", logger="rv2.data.views"):
        _, stats = build_prompts(df, name="mixed.parquet")
        build_prompts(df, name="mixed.parquet")  # the same manifest again: no second warning
    warnings = [r.getMessage() for r in caplog.records if r.name == "rv2.data.views"]
    assert len(warnings) == 1
    assert "mixed.parquet: mixed views (PA 4, AP 1, LATERAL 1, unknown 1)" in warnings[0]
    assert "prompts" in warnings[0] and "views=PA" in warnings[0]
    assert stats["views"] == {"setting": "all", "present": {"PA": 4, "AP": 1, "LATERAL": 1, "unknown": 1},
                              "used": {"PA": 4, "AP": 1, "LATERAL": 1, "unknown": 1}}
    caplog.clear()
    with caplog.at_level("WARNING", logger="rv2.data.views"):
        out, stats = build_prompts(df, PromptsConfig(views="pa"), name="mixed2.parquet")
    assert not [r for r in caplog.records if r.name == "rv2.data.views"]
    assert set(out["image_id"]) <= {"a", "c", "e", "f"} and out["image_id"].tolist() == ["a"]
    assert stats["rows_in"] == 7 and stats["dropped"]["other_view"] == 3
    assert stats["views"]["setting"] == "PA" and stats["views"]["used"] == {"PA": 4}
    with pytest.raises(ValueError, match="no image with a view in \\['LL'\\]"):
        build_prompts(df, PromptsConfig(views="LL"), name="m")
    with pytest.raises(ValueError, match="is not a view"):
        PromptsConfig(views="frontal")
