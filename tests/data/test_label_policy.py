"""The label policy: parsing, its effect on values, and the cases each policy keeps
per label on the real CheXpert metadata shipped in the torchxrayvision wheel."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from rv2.data.label_policy import DEFAULT, LabelPolicy, LabelPolicyError, from_legacy
from rv2.data.schema import CHEXPERT_LABELS, EVAL_LABELS

POLICIES = ("uncertain=0,blank=0", "uncertain=1,blank=0", "uncertain=ignore,blank=0",
            "uncertain=0,blank=ignore", "uncertain=ignore,blank=ignore")


def test_parse_print_and_apply():
    assert DEFAULT == LabelPolicy.parse(None) == LabelPolicy.parse("uncertain=0,blank=0")
    assert str(LabelPolicy.parse("blank=ignore")) == "uncertain=0,blank=ignore"
    assert LabelPolicy.parse({"uncertain": "ones", "blank": "zeros"}) == LabelPolicy("1", "0")
    assert from_legacy("ignore", "zeros") == LabelPolicy("ignore", "0")
    v = np.array([[1.0, 0.0, -1.0, np.nan]])
    np.testing.assert_array_equal(LabelPolicy("1", "ignore").apply(v), [[1, 0, 1, np.nan]])
    np.testing.assert_array_equal(LabelPolicy("ignore", "0").apply(v), [[1, 0, np.nan, 0]])
    t, m = LabelPolicy("ignore", "ignore").targets(v)
    assert t.tolist() == [[1, 0, 0, 0]] and m.tolist() == [[1, 1, 0, 0]]
    for bad in ("uncertain=2", "blank=1", "uncertain", "maybe=0"):
        with pytest.raises(LabelPolicyError):
            LabelPolicy.parse(bad)
    with pytest.raises(ValueError, match="1, 0, -1 or NaN"):
        DEFAULT.apply([[0.5]])


@pytest.fixture(scope="module")
def chexpert_pa():
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None:
        pytest.skip("torchxrayvision is not installed (its wheel ships the real metadata)")
    f = Path(list(spec.submodule_search_locations)[0]) / "data" / "chexpert_train.csv.gz"
    if not f.is_file():
        pytest.skip(f"{f} missing")
    from rv2.data.index import IndexConfig, index_dataset

    df, _ = index_dataset("chexpert", [f], config=IndexConfig(views="PA"), progress=False)
    return df


def test_cases_kept_per_label_and_policy_on_real_chexpert(chexpert_pa):
    df = chexpert_pa
    n = len(df)
    assert n > 20_000 and set(df["view"]) == {"PA"}
    raw = df[list(CHEXPERT_LABELS)].to_numpy(dtype=np.float64, na_value=np.nan)
    kept = {p: dict(zip(CHEXPERT_LABELS, LabelPolicy.parse(p).kept(raw).tolist()))
            for p in POLICIES}
    for c in CHEXPERT_LABELS:  # plain pandas counts of the manifest's values
        col = df[c].astype("float64")
        known, unc, blank = int(col.isin([0.0, 1.0]).sum()), int((col == -1).sum()), int(col.isna().sum())
        assert known + unc + blank == n
        assert kept["uncertain=0,blank=0"][c] == kept["uncertain=1,blank=0"][c] == n
        assert kept["uncertain=ignore,blank=0"][c] == known + blank
        assert kept["uncertain=0,blank=ignore"][c] == known + unc
        assert kept["uncertain=ignore,blank=ignore"][c] == known
    share = {c: kept["uncertain=ignore,blank=ignore"][c] / n for c in EVAL_LABELS}
    # the old evaluation rule (both left out) drops ~70% of Atelectasis, ~14% of No Finding
    assert 0.25 < share["Atelectasis"] < 0.35 and 0.82 < share["No Finding"] < 0.90
    # the default keeps every case: positives are unchanged, the extra cases are negatives
    y0 = DEFAULT.apply(raw)
    yi = LabelPolicy("ignore", "ignore").apply(raw)
    assert (np.nansum(y0 == 1, axis=0) == np.nansum(yi == 1, axis=0)).all()
