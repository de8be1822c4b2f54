"""Report sections and impressions: MIMIC-style free text and the real OpenI/IU XML."""
from __future__ import annotations

import pytest
from rv2.data.report_sections import (
    extract_impression,
    extract_sections,
    has_placeholder,
)

MIMIC = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows.

 IMPRESSION:

 No acute cardiopulmonary process.
"""


def test_mimic_sections_and_impression():
    s = extract_sections(MIMIC)
    assert s["preamble"] == "FINAL REPORT"
    assert s["examination"] == "CHEST (PA AND LAT)"
    assert s["indication"] == "___F with new onset ascites // eval for infection"
    assert s["comparison"] == "None."
    assert s["findings"].startswith("There is no focal consolidation, pleural effusion or "
                                    "pneumothorax. Bilateral nodular")
    assert extract_impression(MIMIC) == "No acute cardiopulmonary process."
    # The same report flattened onto one line splits the same way.
    flat = extract_sections(" ".join(MIMIC.split()))
    assert {k: v for k, v in flat.items()} == s


@pytest.mark.parametrize("text, expected", [
    ("FINDINGS: Lungs clear.\n\nCONCLUSION: Normal chest.", "Normal chest."),
    ("FINDINGS: Lungs clear.\nCONCLUSIONS:\n  1. Small left effusion.\n  2. No pneumothorax.",
     "1. Small left effusion. 2. No pneumothorax."),
    ("FINDINGS AND IMPRESSION: Stable cardiomegaly.", "Stable cardiomegaly."),
    ("FINDINGS: Lungs clear. No effusion.", "Lungs clear. No effusion."),  # falls back to findings
    ("Portable chest.\n\nHeart size normal.\n  Lungs are clear.\n\n", "Heart size normal. Lungs are clear."),
    ("IMPRESSION:   \n\nFINDINGS: Mild edema.", "Mild edema."),  # empty impression -> findings
    ("   ", None),
    (None, None),
])
def test_impression_fallbacks(text, expected):
    assert extract_impression(text) == expected


def test_no_fallback_returns_none_and_prose_colon_is_not_a_header():
    assert extract_impression("FINDINGS: Lungs clear.", fallback=False) is None
    text = "IMPRESSION: Compared to prior: PA and lateral: unchanged effusion."
    assert extract_impression(text) == "Compared to prior: PA and lateral: unchanged effusion."


def test_bad_input_type():
    with pytest.raises(TypeError, match="report must be a string"):
        extract_impression(12)


def test_openi_archive_counts(openi_reports):
    # The wheel's archive: 3,955 report XMLs, 3,921 with a non-empty impression.
    assert len(openi_reports) == 3955
    with_imp = [r for r in openi_reports if r["impression"]]
    assert len(with_imp) == 3921
    assert all(set(r["sections"]) >= {"comparison", "indication", "findings", "impression"}
               for r in openi_reports)
    assert sum(has_placeholder(r["sections"]["impression"]) for r in with_imp) == 672
    by_id = {r["report_id"]: r for r in openi_reports}
    assert by_id["207"]["impression"] == "No acute cardiopulmonary process. No obvious rib fractures. ."
    assert by_id["207"]["images"] == ["CXR207_IM-0703-1001", "CXR207_IM-0703-2001"]
    # An impression that embeds a whole second report is cut to its last IMPRESSION.
    assert by_id["2415"]["impression"] == (
        "Hypoinflation with elevated left hemidiaphragm and possible left basilar infiltrate "
        "versus atelectasis. Followup evaluation is suggested in 2 to 4 weeks.")
    # Reports lacking an impression fall back to their findings when asked.
    empty = [r for r in openi_reports if not r["impression"]]
    assert len(empty) == 34
    assert all(r["sections"]["impression"] == "" for r in empty)


def test_openi_xml_string(openi_reports):
    import tarfile

    from rv2.data.report_sections import openi_reports_archive

    with tarfile.open(openi_reports_archive()) as tar:
        xml = tar.extractfile("ecgen-radiology/207.xml").read().decode()
    s = extract_sections(xml)
    assert s["indication"] == "XXXX, right sided rib pain after falling on the XXXX."
    assert extract_impression(xml) == "No acute cardiopulmonary process. No obvious rib fractures. ."


def test_phantom_world_mimic_reports():
    """The demo world's reports are written in the MIMIC layout; the impression comes back."""
    world = pytest.importorskip("rv2.demo.world")
    reports = pytest.importorskip("rv2.demo.radiology_reports")
    from rv2.data.report_sections import normalize_whitespace

    n_nondescriptive = 0
    for site in ("mimic", "chexpert"):
        for subject in range(60):
            case = world.sample_case(0, site, subject)
            text = reports.write_report(case)
            assert extract_impression(text) == normalize_whitespace(reports.impression(case))
            assert extract_sections(text)["comparison"] == "___"
            n_nondescriptive += case.nondescriptive
    assert n_nondescriptive >= 1  # "___" impressions are among them
