"""Expanded prompts tables for tests: every sex x race cell, seeded ages and labels."""
from __future__ import annotations

import numpy as np
import pandas as pd

from rv2.data.schema import CHEXPERT_LABELS, age_bin


def prompts_table(n: int = 8, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sexes = ["F", "M"]
    races = ["Asian", "Black", "Hispanic", "White"]
    rows = []
    for i in range(n):
        sex, race = sexes[i % 2], races[(i // 2) % 4]
        age = int(rng.integers(20, 90))
        rows.append({
            "prompt_id": f"p{i:04d}-{sex}{race[0]}", "source_prompt_id": f"s{i // 8:04d}",
            "prompt": f"{age} year old {race.upper()} {'female' if sex == 'F' else 'male'}. "
                      f"No acute process {i} .",
            "sex": sex, "race": race, "age": age, "age_bin": age_bin(age), "variant": i % 8,
            "image_id": f"img{i // 8}", "patient_id": f"pat{i // 8}", "split": "train",
            "dataset": "mimic",
            **{lab: float(rng.choice([0.0, 1.0, np.nan])) for lab in CHEXPERT_LABELS},
        })
    return pd.DataFrame(rows)
