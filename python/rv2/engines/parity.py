"""Parity gates: engines against the eager modules they replace.

Per engine, on fixed inputs at the profile's smallest and largest batch:
relative max error = max |engine - eager| / max |eager| per output, at most
`TOLERANCES[precision]`, and every value finite (SD 2.x attention can overflow
in fp16: NaN or inf is a failure whatever the tolerance).

End to end (the generator's engines together, `end_to_end`): images sampled
from the engines against eager images from the same seeds, as the store would
write them (uint8): at least 99% of pixels within 2 grey levels, and the same
QC verdict on at least 99% of a fixed prompt set.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from rv2._native import to_uint8
from rv2.errors import RV2Error

TOLERANCES = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 5e-2}
E2E_GREY_LEVELS = 2
E2E_PIXEL_FRACTION = 0.99
E2E_VERDICT_FRACTION = 0.99


class ParityError(RV2Error):
    """An engine that does not match its eager module: the build fails, naming it."""

    exit_code = 1


def compare(outs: Sequence, refs: Sequence, names: Sequence[str]) -> dict:
    """{output name: {"max_abs", "rel_max", "finite"}} of engine outputs against eager ones."""
    import torch

    fig = {}
    for name, o, r in zip(names, outs, refs):
        o = o.detach().float().cpu()
        r = r.detach().float().cpu()
        if o.shape != r.shape:
            fig[name] = {"max_abs": float("inf"), "rel_max": float("inf"), "finite": False,
                         "shape": [list(o.shape), list(r.shape)]}
            continue
        finite = bool(torch.isfinite(o).all())
        diff = (o - r).abs()
        max_abs = float(diff.max()) if diff.numel() else 0.0
        scale = float(r.abs().max()) if r.numel() else 0.0
        fig[name] = {"max_abs": max_abs, "rel_max": max_abs / max(scale, 1e-12), "finite": finite}
    return fig


def passed(figures: dict, precision: str) -> bool:
    tol = TOLERANCES[precision]
    return all(f["finite"] and f["rel_max"] <= tol for per_batch in figures.values()
               for f in per_batch.values())


def worst(figures: dict) -> tuple[float, float, bool]:
    """(max abs, max rel, all finite) over batches and outputs."""
    rows = [f for per_batch in figures.values() for f in per_batch.values()]
    if not rows:
        return 0.0, 0.0, True
    return (max(f["max_abs"] for f in rows), max(f["rel_max"] for f in rows),
            all(f["finite"] for f in rows))


def end_to_end(eager, engine, prompts: Sequence[dict], steps: int, guidance: float,
               base_seed: int = 0, batch: int = 8) -> dict:
    """Sample `prompts` ({"prompt_id", "prompt", "sex", "race", "age"}) with two
    `StageSet`s from the same seeds, `batch` prompts at a time; compare uint8 images
    and QC verdicts."""
    if len(prompts) > batch:
        parts = [end_to_end(eager, engine, prompts[i:i + batch], steps, guidance, base_seed, batch)
                 for i in range(0, len(prompts), batch)]
        n = sum(p["prompts"] for p in parts)
        out = {"prompts": n, "steps": steps, "guidance": guidance,
               "pixels_within_2": sum(p["pixels_within_2"] * p["prompts"] for p in parts) / n,
               "max_grey_diff": max(p["max_grey_diff"] for p in parts)}
        for k in ("same_verdict", "qc_pass_eager"):
            if k in parts[0]:
                out[k] = sum(p[k] * p["prompts"] for p in parts) / n
        out["passed"] = all(p["passed"] for p in parts) and _ok(out)
        return out

    from rv2.generate.qc_rules import judge
    from rv2.generate.sampler import denoise, latent_shape, latents_for, to_gray

    def sample(stages):
        d = stages.denoiser
        cond = stages.text_encoder.encode([p["prompt"] for p in prompts])
        uncond = stages.text_encoder.encode([""]) if guidance > 1.0 else None
        shape = latent_shape(d, stages.decoder)
        lat, _ = latents_for([p["prompt_id"] for p in prompts], [0] * len(prompts), shape,
                             base_seed, d.device, d.dtype)
        lat = denoise(d, stages.scheduler, cond, uncond, lat, steps, guidance)
        img = to_gray(stages.decoder.decode(lat)).float().cpu()
        u8 = np.stack([to_uint8(np.ascontiguousarray(im[0].numpy())) for im in img])
        verdicts = None
        if stages.qc is not None:
            pred = stages.qc.predict(img)
            verdicts = judge(pred["p_female"], pred["race_probs"], pred["age"],
                             [p["sex"] for p in prompts], [p["race"] for p in prompts],
                             [p["age"] for p in prompts])
        return u8, verdicts

    a, va = sample(eager)
    b, vb = sample(engine)
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    out = {"prompts": len(prompts), "steps": steps, "guidance": guidance,
           "pixels_within_2": float((diff <= E2E_GREY_LEVELS).mean()),
           "max_grey_diff": int(diff.max()) if diff.size else 0}
    if va is not None and vb is not None:
        same = [x["qc_pass"] == y["qc_pass"] for x, y in zip(va, vb)]
        out["same_verdict"] = float(np.mean(same))
        out["qc_pass_eager"] = float(np.mean([x["qc_pass"] for x in va]))
    out["passed"] = _ok(out)
    return out


def _ok(fig: dict) -> bool:
    return (fig["pixels_within_2"] >= E2E_PIXEL_FRACTION
            and fig.get("same_verdict", 1.0) >= E2E_VERDICT_FRACTION)


def e2e_prompts(n: int = 16) -> list[dict]:
    """A fixed prompt set: every sex x race cell, spread ages, short impressions."""
    sexes = [("F", "female"), ("M", "male")]
    races = ["Asian", "Black", "White"]
    findings = ["No acute cardiopulmonary process.", "Small left pleural effusion.",
                "Cardiomegaly.", "Right lower lobe opacity.", "Clear lungs."]
    out = []
    for i in range(n):
        (sex, word), race = sexes[i % 2], races[(i // 2) % 3]
        age = 25 + (i * 37) % 60
        out.append({"prompt_id": f"parity{i:03d}", "sex": sex, "race": race, "age": float(age),
                    "prompt": f"{age} year old {race.upper()} {word}. {findings[i % len(findings)]}"})
    return out


def format_table(rows: Sequence[dict]) -> str:
    """The parity table `rv2 build-engines` prints."""
    head = ["component", "backend", "precision", "status", "max abs err", "rel max err", "tol",
            "finite", "build s"]
    lines = [head]
    for r in rows:
        lines.append([r["component"], r["backend"], r.get("precision", ""), r["status"],
                      _num(r.get("max_abs")), _num(r.get("rel_max")), _num(r.get("tolerance")),
                      "" if r.get("finite") is None else ("yes" if r["finite"] else "NO"),
                      "" if r.get("seconds") is None else f"{r['seconds']:.1f}"])
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(head))]
    fmt = lambda row: "  ".join(str(c).ljust(w) for c, w in zip(row, widths))  # noqa: E731
    return "\n".join([fmt(lines[0]), fmt(["-" * w for w in widths])] + [fmt(r) for r in lines[1:]])


def _num(v) -> str:
    return "" if v is None else f"{v:.2e}"


__all__ = ["compare", "passed", "worst", "end_to_end", "e2e_prompts", "format_table", "ParityError",
           "TOLERANCES"]
