"""The authors' prompt CSV (`dicom_id, gender, anchor_age, race, impression_short,
prompt_variation`) to and from our prompts table."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from rv2.data.demographics import check_demographics
from rv2.data.schema import CHEXPERT_LABELS, STUDY_RACES, age_bin
from rv2.errors import MissingInputError, UserError
from rv2.files import atomic_write_text
from rv2.prompts.build import OUTPUT_COLUMNS, prompt_id
from rv2.prompts.template import (
    PromptTemplate,
    canonical_age,
    canonical_race,
    canonical_sex,
)
from rv2.prompts.tokenizer import count_tokens

AUTHORS_COLUMNS: tuple[str, ...] = ("dicom_id", "gender", "anchor_age", "race", "impression_short",
                                    "prompt_variation")


def import_authors_csv(path: str | os.PathLike, *, split: str = "train", dataset: str = "authors-csv",
                       template: PromptTemplate | None = None) -> tuple[pd.DataFrame, dict]:
    """Read an authors' CSV into a prompts table; prompts are kept verbatim.

    Returns (table, counts) where counts["template_mismatch"] is the number of
    rows whose prompt our template would not write identically, and
    counts["over_limit"] the rows above 77 tokens (kept, for the user to see).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"authors' prompt CSV not found: {path}")
    src = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in AUTHORS_COLUMNS if c not in src.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {missing}; expected {list(AUTHORS_COLUMNS)}")
    if src["dicom_id"].duplicated().any():
        raise UserError(f"{path}: duplicate dicom_id(s), e.g. "
                         f"{src.loc[src['dicom_id'].duplicated(), 'dicom_id'].head(3).tolist()}")
    # Refuse demographics the template cannot write (an `Unknown` sex would otherwise
    # become a silently impression-only row); well-known spellings are accepted.
    check_demographics(src.rename(columns={"gender": "sex", "anchor_age": "age"}), str(path),
                       races=STUDY_RACES, columns=("sex", "race", "age"), id_column="dicom_id")
    template = template or PromptTemplate()
    rows, mismatch = [], 0
    for r in src.to_dict("records"):
        sex, age, race = canonical_sex(r["gender"]), canonical_age(r["anchor_age"]), \
            canonical_race(r["race"])
        prompt = r["prompt_variation"]
        if template.render(r["impression_short"], age, race, sex) != prompt:
            mismatch += 1
        rec = {c: None for c in OUTPUT_COLUMNS}
        rec.update({c: np.nan for c in CHEXPERT_LABELS})
        rec.update(image_id=r["dicom_id"], dataset=dataset, split=split, sex=sex,
                   age=float(age) if age is not None else np.nan, age_bin=age_bin(age), race=race,
                   impression=r["impression_short"], impression_short=r["impression_short"],
                   prompt=prompt, n_tokens=count_tokens(prompt), shortened_by="none",
                   prompt_id=prompt_id(r["dicom_id"], prompt))
        rows.append(rec)
    df = pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))
    df["n_tokens"] = df["n_tokens"].astype("int64")
    df["age"] = df["age"].astype("float64")
    counts = {"rows": len(df), "template_mismatch": mismatch,
              "over_limit": int((df["n_tokens"] > 77).sum()) if len(df) else 0}
    return df, counts


def export_authors_csv(df: pd.DataFrame, path: str | os.PathLike, *,
                       template: PromptTemplate | None = None) -> Path:
    """Write a prompts table in the authors' CSV format (race cased as the template says)."""
    missing = [c for c in ("image_id", "sex", "age", "race", "impression_short", "prompt")
               if c not in df.columns]
    if missing:
        raise UserError(f"prompts table lacks column(s) {missing} for the authors' CSV")
    template = template or PromptTemplate()

    def race_word(r):
        return template.race_word(r) if canonical_race(r) is not None else ""

    out = pd.DataFrame({
        "dicom_id": df["image_id"].astype(str).to_numpy(),
        "gender": [canonical_sex(s) or "" for s in df["sex"]],
        "anchor_age": pd.array([canonical_age(a) for a in df["age"]], dtype="Int64"),
        "race": [race_word(r) for r in df["race"]],
        "impression_short": df["impression_short"].astype(str).to_numpy(),
        "prompt_variation": df["prompt"].astype(str).to_numpy(),
    })
    path = Path(path)
    atomic_write_text(path, out.to_csv(index=False, lineterminator="\n"))
    return path
