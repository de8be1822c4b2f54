"""Fixtures of the prompt tests: the real OpenI/IU reports and the authors' demo CSV."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def openi_reports() -> list[dict]:
    """All 3,955 OpenI/IU reports shipped in the torchxrayvision wheel, parsed once."""
    from rv2.data.report_sections import iter_openi_reports, openi_reports_archive

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


@pytest.fixture(scope="session")
def make_manifest():
    """Build a schema-conformant manifest from short row dicts (image_id, text, demographics)."""
    import numpy as np
    import pandas as pd
    from rv2.data.manifest import conform
    from rv2.data.schema import CHEXPERT_LABELS

    def make(rows: list[dict], dataset: str = "mimic") -> pd.DataFrame:
        full = []
        for i, r in enumerate(rows):
            base = {"path": f"files/{r['image_id']}.jpg", "patient_id": f"p{i}",
                    "study_id": f"s{i}", "view": "PA", "split": "train", "sex": None,
                    "age": np.nan, "race": None}
            base.update({c: np.nan for c in CHEXPERT_LABELS})
            base.update(r)
            full.append(base)
        return conform(pd.DataFrame(full), dataset=dataset)

    return make
