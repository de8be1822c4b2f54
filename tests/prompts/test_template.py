"""The prompt template (the authors' demo, character for character) and impression cleaning."""
from __future__ import annotations

import pandas as pd
import pytest
from rv2.prompts.template import PromptTemplate, clean_impression, split_sentences


def test_default_reproduces_authors_demo(demo_csv, real_cxr):
    t = PromptTemplate()
    df = pd.read_csv(demo_csv, dtype=str)
    assert len(df) == 10
    for r in df.itertuples():
        assert t.render(r.impression_short, r.anchor_age, r.race, r.gender) == r.prompt_variation
    # The per-image prompt files of the demo hold the same text.
    for txt in sorted(real_cxr.glob("rv2demo_demo*.txt")):
        row = df[df.dicom_id == txt.stem.replace("rv2demo_", "")].iloc[0]
        assert txt.read_text().strip() == row.prompt_variation


def test_manifest_style_values_render_the_same():
    # Manifest values (title-case race, F/M, float age, impression without the spaced period).
    t = PromptTemplate()
    assert (t.render("No evidence of acute cardiopulmonary process.", 86.0, "Black", "F")
            == "86 year old BLACK female. No evidence of acute cardiopulmonary process .")


@pytest.mark.parametrize("settings, expected", [
    ({"race_case": "title"}, "54 year old White male. Stable cardiomegaly ."),
    ({"race_case": "lower", "space_before_final_period": False},
     "54 year old white male. Stable cardiomegaly."),
    ({"sex_words": {"F": "woman", "M": "man"}}, "54 year old WHITE man. Stable cardiomegaly ."),
    ({"text": "{sex}, {race}, {age} years: {impression}"},
     "male, WHITE, 54 years: Stable cardiomegaly ."),
])
def test_template_settings(settings, expected):
    assert PromptTemplate(**settings).render("Stable cardiomegaly.", 54, "WHITE", "M") == expected


def test_final_period_handling():
    t = PromptTemplate()
    assert t.format_impression("No acute process. No obvious rib fractures. .") == \
        "No acute process. No obvious rib fractures ."
    assert t.format_impression("Bibasilar opacities,") == "Bibasilar opacities ."
    assert t.format_impression("Pneumothorax?") == "Pneumothorax?"
    assert PromptTemplate(final_period=False).format_impression("No edema") == "No edema"
    assert PromptTemplate(space_before_final_period=False).format_impression("Normal chest .") == \
        "Normal chest."


def test_missing_demographics_give_impression_only_and_bad_values_are_named():
    t = PromptTemplate()
    assert t.render("Normal chest.", None, "White", "F") == "Normal chest ."
    assert t.render("Normal chest.", 40, "Other", "F") == "Normal chest ."
    with pytest.raises(ValueError, match="race 'Martian'"):
        t.race_word("Martian")
    with pytest.raises(ValueError, match="sex 'X'"):
        t.sex_word("X")


def test_split_sentences():
    assert split_sentences("1. Tracheostomy tube in place. 2. Ill-defined 2.5 cm x 1.9 cm density. "
                           "Dr. Smith was notified at 2 p.m. 3) Heart size normal.") == [
        "Tracheostomy tube in place.", "Ill-defined 2.5 cm x 1.9 cm density.",
        "Dr. Smith was notified at 2 p.m.", "Heart size normal."]
    assert split_sentences("Posterior rib 8. Normal.") == ["Posterior rib 8.", "Normal."]
    assert split_sentences("  ") == []


@pytest.mark.parametrize("text, keep, remove, drop", [
    ("Negative chest x-XXXX.", "Negative chest x-XXXX.", "Negative chest x-ray.", ""),
    ("No acute disease. XXXX right upper lobe granuloma.",
     "No acute disease. XXXX right upper lobe granuloma.",
     "No acute disease. Right upper lobe granuloma.", "No acute disease."),
    ("Comparison XXXX, XXXX. Aortic XXXX calcification.", "Comparison XXXX, XXXX. Aortic XXXX calcification.",
     "Comparison. Aortic calcification.", ""),
    ("Dr. ___ was notified at ___ by ___. No pneumothorax.",
     "Dr. ___ was notified at ___ by ___. No pneumothorax.",
     "Dr. was notified at by. No pneumothorax.", "No pneumothorax."),
    ("Date XXXXPM. Clear lungs.", "Date XXXXPM. Clear lungs.", "Date. Clear lungs.", "Clear lungs."),
])
def test_deid_modes(text, keep, remove, drop):
    assert clean_impression(text, "keep") == keep
    assert clean_impression(text, "remove") == remove
    assert clean_impression(text, "drop_sentence") == drop


def test_clean_unescapes_html_and_rejects_unknown_mode():
    assert clean_impression("Normal.&gt;] Lungs  clear.", "keep") == "Normal.>] Lungs clear."
    assert clean_impression(None) == "" and clean_impression(float("nan")) == ""
    with pytest.raises(ValueError, match="deid must be"):
        clean_impression("XXXX", "scramble")
