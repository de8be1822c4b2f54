"""Early QC rejection: stop an attempt whose image already disagrees with its prompt.

At check points (fractions of the denoiser calls, `EarlyRejectConfig.at`) the
sampler's current latent and the guided noise prediction of the call just made
give a prediction of the final latent,

    x0 = (x_t - sqrt(1 - abar_t) * eps) / sqrt(abar_t)

(x_t the denoiser's input, in the variance-preserving scale every sampler feeds
the UNet). It is decoded with the run's decoder and judged by the run's QC
networks. Each attribute's disagreement is a signed distance past the QC
decision boundary, positive on the wrong side:

    sex   P(other sex) - P(requested sex)            in [-1, 1]
    race  max P(other race) - P(requested race)      in [-1, 1]   (Hispanic: unchecked)
    age   |age - requested| - tolerance               years

An attempt stops when any attribute is past its margin (`margin` for sex and
race, `age_margin` for age); at margin 0 it stops wherever the final QC rule
would reject the predicted image. A stopped attempt is a failed attempt
(`qc_pass` False, its reasons the attributes past the margin) that records the
denoiser calls it used (`qc_early_stop_call`); the retry rule then gives the
prompt its next attempt, as for any failure.

The batch-synchronous loop here (`denoise_checked`) keeps per-row sampler state
(`rv2.generate.slot_samplers`), so stopped rows leave the batch and the denoiser
runs on the rest; the continuous executors free the slot at once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from rv2.errors import UserError
from rv2.generate.config import EarlyRejectConfig
from rv2.generate.qc_rules import judge
from rv2.models.qc_networks import RACE_CLASSES

ATTRS = ("sex", "race", "age")


def check_calls(fractions: Sequence[float], n_calls: int) -> list[int]:
    """The 0-based denoiser calls after which a check runs: fraction f checks after
    round(f * n_calls) calls (at least one, never after the last call)."""
    out = {min(max(1, round(f * n_calls)), n_calls - 1) - 1 for f in fractions}
    return sorted(k for k in out if k >= 0)


def predict_x0(alphas_cumprod, x_in, eps, timesteps):
    """The final latent predicted from the denoiser input `x_in` (VP scale), its guided
    noise prediction `eps` and each row's timestep (a diffusers scheduler's
    `alphas_cumprod` gives abar_t)."""
    import torch

    idx = torch.as_tensor([round(float(t)) for t in timesteps.reshape(-1).tolist()])
    abar = alphas_cumprod[idx].to(device=x_in.device, dtype=torch.float32)
    abar = abar.view(-1, *([1] * (x_in.dim() - 1)))
    x0 = (x_in.float() - (1 - abar).sqrt() * eps.float()) / abar.sqrt()
    return x0.to(x_in.dtype)


def disagreement(pred: dict, sex: Sequence[str], race: Sequence[str], age: Sequence[float],
                 age_tolerance: float) -> dict[str, np.ndarray]:
    """Per attribute, the signed distance past the QC decision boundary (positive: the
    image disagrees); race is NaN where the request cannot be judged (Hispanic)."""
    pf = np.asarray(pred["p_female"], dtype=np.float64)
    probs = np.asarray(pred["race_probs"], dtype=np.float64)
    p_req = np.where(np.asarray(sex) == "F", pf, 1 - pf)
    out_race = np.full(len(sex), np.nan)
    for i, r in enumerate(race):
        if r in RACE_CLASSES:
            j = RACE_CLASSES.index(r)
            out_race[i] = np.delete(probs[i], j).max() - probs[i, j]
    err = np.abs(np.asarray(pred["age"], dtype=np.float64) - np.asarray(age, dtype=np.float64))
    return {"sex": 1 - 2 * p_req, "race": out_race, "age": err - age_tolerance}


def past_margin(scores: dict[str, np.ndarray], margin: float, age_margin: float) -> list[list[str]]:
    """Per row, the attributes whose disagreement exceeds its margin (strictly: a row
    at or under every margin is never stopped)."""
    lim = {"sex": margin, "race": margin, "age": age_margin}
    n = len(scores["sex"])
    return [[a for a in ATTRS if not math.isnan(scores[a][i]) and scores[a][i] > lim[a]]
            for i in range(n)]


@dataclass
class Check:
    """One row of one check: where, the disagreements, whether it stopped."""

    row: int
    call: int                     # denoiser calls made so far (the check follows them)
    scores: dict                  # attribute -> disagreement
    stop: bool
    verdict: dict                 # the early record fields (qc_* of the predicted image)
    image: Any                    # 1 x c x H x W predicted image in [0, 1]


class EarlyRejector:
    """Checks rows at the configured calls with a decoder and QC predictor (the run's
    own). `on_check(list[Check])` sees every check (tests, measurements)."""

    def __init__(self, cfg: EarlyRejectConfig, n_calls: int, decoder, qc, alphas_cumprod,
                 age_tolerance: float, channels: str = "gray",
                 on_check: Callable[[list[Check]], None] | None = None):
        if qc is None:
            raise UserError("early rejection (early_reject.at) judges images with the QC networks; "
                            "it cannot run with QC off (--no-qc)")
        self.cfg, self.n_calls = cfg, n_calls
        self.calls = set(check_calls(cfg.at, n_calls))
        self.decoder, self.qc, self.alphas = decoder, qc, alphas_cumprod
        self.tolerance, self.channels, self.on_check = age_tolerance, channels, on_check

    def due(self, k: int) -> bool:
        """Whether a check follows call k (0-based)."""
        return k in self.calls

    def check(self, bases: Sequence[dict], ks: Sequence[int], x_in, eps, timesteps) -> list[Check]:
        """Judge the predicted final images of rows at calls `ks` (0-based, just made)."""
        import torch

        from rv2.generate.sampler import to_gray

        x0 = predict_x0(self.alphas, x_in, eps, timesteps)
        with torch.inference_mode():
            images = self.decoder.decode(x0)
        gray = to_gray(images)
        pred = self.qc.predict(gray)
        sex, race, age = ([b[k] for b in bases] for k in ATTRS)
        verdicts = judge(pred["p_female"], pred["race_probs"], pred["age"], sex, race, age,
                         self.tolerance)
        scores = disagreement(pred, sex, race, age, self.tolerance)
        past = past_margin(scores, self.cfg.margin, self.cfg.age_margin)
        kept = gray if self.channels == "gray" else images
        out = []
        for i, (v, p) in enumerate(zip(verdicts, past)):
            v = {**v, "qc_pass": False, "qc_fail_reasons": ";".join(p),
                 "qc_early_stop_call": int(ks[i]) + 1, "qc_denoiser_calls": int(ks[i]) + 1}
            out.append(Check(i, int(ks[i]) + 1, {a: float(scores[a][i]) for a in ATTRS},
                             bool(p), v, kept[i:i + 1]))
        if self.on_check is not None:
            self.on_check(out)
        return out


def denoise_checked(denoiser, scheduler, cond, uncond, latents, steps: int, guidance: float,
                    rejector: EarlyRejector, bases: Sequence[dict],
                    on_step: Callable[[int], None] | None = None):
    """`rv2.generate.sampler.denoise` with early checks: rows stopped at a check leave the
    batch. Returns (latents B x C x h x w, {row: Check} of the stopped rows; their
    latents rows are left as they were at the stop)."""
    import torch

    from rv2.generate.slot_samplers import slot_sampler_for

    b = latents.shape[0]
    s = slot_sampler_for(scheduler, steps, b)
    x = torch.cat([s.start(i, latents[i:i + 1]) for i in range(b)]) if b else latents
    use_cfg = guidance > 1.0
    if use_cfg and uncond is None:
        raise UserError("classifier-free guidance needs the empty prompt's embedding")
    active, stopped = list(range(b)), {}
    step = 0
    with torch.inference_mode():
        while active:
            rows = x[active]
            inp = s.scale_input(active, rows)
            t = s.timesteps_for(active, latents.device)
            if use_cfg:
                n = len(active)
                ctx = torch.cat([uncond.expand(n, -1, -1).to(cond.dtype), cond[active]])
                eu, ec = denoiser.predict_noise(torch.cat([inp, inp]), torch.cat([t, t]), ctx).chunk(2)
                eps = eu + guidance * (ec - eu)
            else:
                eps = denoiser.predict_noise(inp, t, cond[active])
            ks = [s.k[r] for r in active]
            due = [j for j, k in enumerate(ks) if rejector.due(k)]
            stop_rows: set[int] = set()
            if due:
                for c in rejector.check([bases[active[j]] for j in due], [ks[j] for j in due],
                                        inp[due], eps[due], t[due]):
                    if c.stop:
                        r = active[due[c.row]]
                        c.row = r
                        stopped[r] = c
                        stop_rows.add(r)
            x[active] = s.step(active, eps, rows)
            if on_step is not None:
                on_step(step)
            step += 1
            active = [r for r in active if r not in stop_rows and not s.done(r)]
    return x, stopped


def attempt_accounting(records: Sequence[dict]) -> dict:
    """attempts = accepted + failed (ran to the end, failed QC) + early_stopped, and the
    denoiser (UNet) calls spent per accepted image where the records carry them."""
    n = len(records)
    accepted = sum(1 for r in records if r.get("qc_pass"))
    early = sum(1 for r in records if _stopped(r))
    calls = [r.get("qc_denoiser_calls") for r in records]
    known = all(isinstance(c, (int, np.integer)) for c in calls)
    total = int(sum(calls)) if known and n else None
    return {"attempts": n, "accepted": accepted, "failed": n - accepted - early,
            "early_stopped": early, "denoiser_calls": total,
            "denoiser_calls_per_accepted": round(total / accepted, 3) if total is not None and accepted
            else None}


def _stopped(r: dict) -> bool:
    c = r.get("qc_early_stop_call")
    return c is not None and not (isinstance(c, float) and math.isnan(c))


__all__ = [
    "ATTRS",
    "Check",
    "EarlyRejector",
    "attempt_accounting",
    "check_calls",
    "denoise_checked",
    "disagreement",
    "past_margin",
    "predict_x0",
]
