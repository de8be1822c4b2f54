"""A validation set on the phantom world for `rv2 eval-generator`: held-out
phantoms (PA, one of the four study groups, a descriptive report) as PNGs and a
prompts table in the layout of `rv2 prompts build` (prompt, demographics, the
14 labels, `path` relative to the table's folder, split "validate").

The subjects come from the world seed the bundled generator was trained on
(1000) but from a subject range it never saw, so real and synthetic images
share one world and the generator has not memorised these cases.
"""
from __future__ import annotations

from pathlib import Path

from rv2.data.schema import age_bin
from rv2.demo.radiology_reports import impression, labels
from rv2.demo.world import render, sample_case
from rv2.prompts.template import PromptTemplate

WORLD_SEED = 1000            # the bundled generator's world (tools/train_demo_models.py)
FIRST_SUBJECT = 5 * 10**6    # far beyond its training and hold-out subject ranges


def phantom_cases(n: int, first_subject: int = FIRST_SUBJECT, site: str = "mimic",
                  seed: int = WORLD_SEED):
    """n (case, prompt) pairs usable as prompts, from consecutive subjects."""
    tpl = PromptTemplate()
    out, i = [], first_subject
    while len(out) < n:
        c = sample_case(seed, site, i)
        i += 1
        if c.group is None or c.view != "PA" or c.nondescriptive:
            continue
        out.append((c, tpl.render(impression(c), c.age, c.group, c.sex)))
    return out


def write_validation_set(out: str | Path, n: int = 64, image_size: int = 64,
                         first_subject: int = FIRST_SUBJECT) -> Path:
    """Write `out/images/*.png` and `out/prompts.parquet`; returns the table's path."""
    import pandas as pd
    from PIL import Image

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for c, prompt in phantom_cases(n, first_subject):
        rel = f"images/{c.case_id}.png"
        if not (out / rel).is_file():
            Image.fromarray(render(c, image_size, seed=WORLD_SEED)).save(out / rel)
        rows.append({"image_id": c.case_id, "path": rel, "patient_id": f"demo-{c.subject}",
                     "study_id": c.case_id, "dataset": "demo", "view": "PA", "split": "validate",
                     "sex": c.sex, "age": float(c.age), "age_bin": age_bin(c.age),
                     "race": c.group, **labels(c), "prompt": prompt, "prompt_id": c.case_id})
    table = out / "prompts.parquet"
    pd.DataFrame(rows).to_parquet(table)
    return table
