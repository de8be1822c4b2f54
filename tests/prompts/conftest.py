"""Fixtures of the prompt tests: the real OpenI/IU reports and the authors' demo CSV."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def openi_reports() -> list[dict]:
    """All 3,955 OpenI/IU reports shipped in the torchxrayvision wheel, parsed once."""
    from rv2.prompts.reports import iter_openi_reports, openi_reports_archive

    try:
        archive = openi_reports_archive()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    return list(iter_openi_reports(archive))


@pytest.fixture(scope="session")
def demo_csv(real_cxr):
    path = real_cxr / "rv2demo_inference_prompts.csv"
    if not path.is_file():
        pytest.skip(f"authors' demo prompts not found at {path}")
    return path
