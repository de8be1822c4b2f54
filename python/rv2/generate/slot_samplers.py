"""Sampling schedulers with per-slot state, for continuous batching.

diffusers' schedulers keep one state for a whole batch: every row must be at
the same step. A slot sampler keeps the state per slot (row of a fixed-capacity
batch): its step index and its history. Rows at different steps then share one
denoiser call, and items join whenever a slot frees up.

Exactness: each per-step coefficient is computed once with diffusers' own
expressions on 0-d float32 tensors (the same ops, in the same order, as its
`step`), then gathered per row; the row update repeats diffusers' elementwise
expressions. So a row's trajectory equals the batch-synchronous diffusers loop
(`rv2.generate.sampler.denoise`) bit for bit, given the same noise predictions.

Supported: PNDM with skip_prk_steps (the paper's; PLMS history per slot), DDIM
(eta = 0), Euler (discrete, no churn) and DPM-Solver++ 2M (midpoint).
`slot_sampler_for(scheduler, steps)` picks the one for a diffusers scheduler.
"""
from __future__ import annotations

import copy
import typing
from typing import Sequence

import torch

from rv2.errors import UserError


class SlotSampler:
    """Per-slot scheduler state over `capacity` slots. Subclasses fill `timesteps`
    (the denoiser's timestep at each of the `n_calls` calls) and `_update`."""

    name = "base"

    def __init__(self, scheduler, steps: int, capacity: int):
        self.sched = copy.deepcopy(scheduler)
        self.sched.set_timesteps(steps, device="cpu")
        self.steps, self.capacity = steps, capacity
        self.timesteps = self.sched.timesteps.clone()
        self.n_calls = len(self.timesteps)
        self.k = [0] * capacity          # each slot's call index (its own step)
        self.init_noise_sigma = self.sched.init_noise_sigma

    # ---- the slot lifecycle
    def start(self, slot: int, latents: torch.Tensor) -> torch.Tensor:
        """A new item in `slot`: its state is reset; returns its first sample (1 row)."""
        self.k[slot] = 0
        self._reset(slot)
        return latents * self.init_noise_sigma

    def timesteps_for(self, slots: Sequence[int], device) -> torch.Tensor:
        return self.timesteps[[self.k[s] for s in slots]].to(device)

    def done(self, slot: int) -> bool:
        return self.k[slot] >= self.n_calls

    def scale_input(self, slots: Sequence[int], x: torch.Tensor) -> torch.Tensor:
        return x

    def step(self, slots: Sequence[int], eps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """One update of each row of `x` (row i is slot slots[i], at its own step)."""
        out = self._update(list(slots), eps, x)
        for s in slots:
            self.k[s] += 1
        return out

    # ---- the fused path: x_next = A x + B (W . [e, h0, h1, h2]), e the guided eps
    def fused_terms(self, slots: Sequence[int], x: torch.Tensor):
        """(A (n,), B (n,), W (n, 4), sample n x ..., hist n x 3 x ...) of one step in the
        linear form of the fused kernel (`rv2._native.guided_update`), or None when this
        sampler has no such form. Float32, on x's device."""
        del slots, x
        return None

    def advance(self, slots: Sequence[int], e: torch.Tensor, x: torch.Tensor) -> None:
        """After a fused step: keep the guided eps `e` where the sampler keeps history."""
        for s in slots:
            self.k[s] += 1

    def _linear(self, slots, x, A, B):
        ks = [self.k[s] for s in slots]
        n = len(slots)
        W = torch.zeros((n, 4), dtype=torch.float32)
        W[:, 0] = 1
        return (A[ks].float().to(x.device), B[ks].float().to(x.device), W.to(x.device), x.float(),
                torch.zeros((n, 3, *x.shape[1:]), dtype=torch.float32, device=x.device))

    # ---- helpers for subclasses
    def _reset(self, slot: int) -> None:
        pass

    def _update(self, slots: list[int], eps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _groups(self, slots: list[int], key) -> dict:
        """Row indices grouped by key(slot): rows of a group share one formula."""
        groups: dict = {}
        for i, s in enumerate(slots):
            groups.setdefault(key(s), []).append(i)
        return groups

    @staticmethod
    def _col(table: torch.Tensor, ks: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        """Per-row coefficients table[ks] as an (n, 1, 1, 1) column in like's dtype."""
        return table[list(ks)].to(like.device, like.dtype).view(-1, *([1] * (like.dim() - 1)))


class SlotPNDM(SlotSampler):
    """diffusers' PNDMScheduler with skip_prk_steps=True (PLMS), per slot.

    Call k of a slot (diffusers' `counter`): k = 0 stores eps and the sample;
    k = 1 re-evaluates from the stored sample with the mean of both eps, at the
    same target timestep; then Adams-Bashforth of order 2, 3 and 4 over the last
    eps (the `ets` history)."""

    name = "pndm"

    def __init__(self, scheduler, steps: int, capacity: int):
        if not scheduler.config.skip_prk_steps:
            raise UserError("continuous batching supports PNDM with skip_prk_steps=True only")
        super().__init__(scheduler, steps, capacity)
        s = self.sched
        ratio = s.config.num_train_timesteps // s.num_inference_steps
        sc, dn, de = [], [], []
        for k, t in enumerate(self.timesteps.tolist()):
            prev_t = t - ratio
            if k == 1:
                prev_t, t = t, t + ratio
            a_t = s.alphas_cumprod[t]
            a_prev = s.alphas_cumprod[prev_t] if prev_t >= 0 else s.final_alpha_cumprod
            b_t, b_prev = 1 - a_t, 1 - a_prev
            sc.append((a_prev / a_t) ** (0.5))
            dn.append(a_t * b_prev ** (0.5) + (a_t * b_t * a_prev) ** (0.5))
            de.append(a_prev - a_t)
        self.sample_coeff, self.denom, self.delta = torch.stack(sc), torch.stack(dn), torch.stack(de)
        self.ets: list[list[torch.Tensor]] = [[] for _ in range(capacity)]
        self.cur_sample: list[torch.Tensor | None] = [None] * capacity

    # weights of (new eps, ets[-1], ets[-2], ets[-3]) at call k (k >= 4: order 4)
    PLMS_WEIGHTS: typing.ClassVar[dict] = {
        0: (1.0, 0.0, 0.0, 0.0), 1: (0.5, 0.5, 0.0, 0.0), 2: (1.5, -0.5, 0.0, 0.0),
        3: (23 / 12, -16 / 12, 5 / 12, 0.0), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}

    def _reset(self, slot):
        self.ets[slot] = []
        self.cur_sample[slot] = None

    def fused_terms(self, slots, x):
        ks = [self.k[s] for s in slots]
        A = self.sample_coeff[ks].float()
        B = -(self.delta[ks].float() / self.denom[ks].float())
        W = torch.tensor([self.PLMS_WEIGHTS[min(k, 4)] for k in ks], dtype=torch.float32)
        sample = torch.stack([(self.cur_sample[s][0] if k == 1 else x[j]) for j, (s, k)
                              in enumerate(zip(slots, ks))]).float()
        hist = torch.zeros((len(slots), 3, *x.shape[1:]), dtype=torch.float32, device=x.device)
        for j, s in enumerate(slots):
            for back, e in enumerate(reversed(self.ets[s][-3:])):
                hist[j, back] = e[0]
        dev = x.device
        return A.to(dev), B.to(dev), W.to(dev), sample, hist

    def advance(self, slots, e, x):
        for j, s in enumerate(slots):
            k = self.k[s]
            if k != 1:
                self.ets[s] = self.ets[s][-3:] + [e[j:j + 1].to(x.dtype)]
            if k == 0:
                self.cur_sample[s] = x[j:j + 1]
            elif k == 1:
                self.cur_sample[s] = None
            self.k[s] += 1

    def _update(self, slots, eps, x):
        out = torch.empty_like(x)
        for phase, rows in self._groups(slots, lambda s: min(self.k[s], 4)).items():
            ss = [slots[i] for i in rows]
            e, sample = eps[rows], x[rows]
            if phase != 1:
                for j, s in enumerate(ss):
                    self.ets[s] = self.ets[s][-3:] + [e[j:j + 1]]

            def hist(back, ss=ss):
                return torch.cat([self.ets[s][-back] for s in ss])

            if phase == 0:
                mo = e
                for j, s in enumerate(ss):
                    self.cur_sample[s] = sample[j:j + 1]
            elif phase == 1:
                mo = (e + hist(1)) / 2
                sample = torch.cat([self.cur_sample[s] for s in ss])
                for s in ss:
                    self.cur_sample[s] = None
            elif phase == 2:
                mo = (3 * hist(1) - hist(2)) / 2
            elif phase == 3:
                mo = (23 * hist(1) - 16 * hist(2) + 5 * hist(3)) / 12
            else:
                mo = (1 / 24) * (55 * hist(1) - 59 * hist(2) + 37 * hist(3) - 9 * hist(4))
            ks = [self.k[s] for s in ss]
            out[rows] = (self._col(self.sample_coeff, ks, sample) * sample
                         - self._col(self.delta, ks, sample) * mo / self._col(self.denom, ks, sample))
        return out


class SlotDDIM(SlotSampler):
    """diffusers' DDIMScheduler with eta = 0 (deterministic), epsilon prediction."""

    name = "ddim"

    def __init__(self, scheduler, steps: int, capacity: int):
        super().__init__(scheduler, steps, capacity)
        s = self.sched
        if s.config.prediction_type != "epsilon" or s.config.thresholding:
            raise UserError("slot DDIM supports epsilon prediction without thresholding")
        ratio = s.config.num_train_timesteps // s.num_inference_steps
        a_ts, b_sq, a_prev_sq, a_sq, dirs = [], [], [], [], []
        for t in self.timesteps.tolist():
            prev_t = t - ratio
            a_t = s.alphas_cumprod[t]
            a_prev = s.alphas_cumprod[prev_t] if prev_t >= 0 else s.final_alpha_cumprod
            b_t = 1 - a_t
            std = 0.0 * s._get_variance(t, prev_t) ** (0.5)
            b_sq.append(b_t ** (0.5))
            a_sq.append(a_t ** (0.5))
            dirs.append((1 - a_prev - std ** 2) ** (0.5))
            a_prev_sq.append(a_prev ** (0.5))
            a_ts.append(a_t)
        self.b_sq, self.a_sq = torch.stack(b_sq), torch.stack(a_sq)
        self.dir_coeff, self.a_prev_sq = torch.stack(dirs), torch.stack(a_prev_sq)

    def fused_terms(self, slots, x):
        if self.sched.config.clip_sample:
            return None
        A = self.a_prev_sq / self.a_sq
        B = self.dir_coeff - self.a_prev_sq * self.b_sq / self.a_sq
        return self._linear(slots, x, A, B)

    def _update(self, slots, eps, x):
        ks = [self.k[s] for s in slots]
        x0 = (x - self._col(self.b_sq, ks, x) * eps) / self._col(self.a_sq, ks, x)
        if self.sched.config.clip_sample:
            r = self.sched.config.clip_sample_range
            x0 = x0.clamp(-r, r)
        return self._col(self.a_prev_sq, ks, x) * x0 + self._col(self.dir_coeff, ks, x) * eps


class SlotEuler(SlotSampler):
    """diffusers' EulerDiscreteScheduler without churn (s_churn = 0), epsilon prediction."""

    name = "euler"

    def __init__(self, scheduler, steps: int, capacity: int):
        super().__init__(scheduler, steps, capacity)
        s = self.sched
        if s.config.prediction_type != "epsilon":
            raise UserError("slot Euler supports epsilon prediction only")
        sig = s.sigmas.to(torch.float32)
        self.sigma = sig[:-1].clone()
        self.sigma_hat = torch.stack([sig[k] * (0.0 + 1) for k in range(self.n_calls)])
        self.dt = torch.stack([sig[k + 1] - self.sigma_hat[k] for k in range(self.n_calls)])
        self.in_scale = torch.stack([(sig[k] ** 2 + 1) ** 0.5 for k in range(self.n_calls)])

    def scale_input(self, slots, x):
        return x / self._col(self.in_scale, [self.k[s] for s in slots], x)

    def fused_terms(self, slots, x):
        return self._linear(slots, x, torch.ones_like(self.dt), self.dt)

    def _update(self, slots, eps, x):
        ks = [self.k[s] for s in slots]
        sample = x.to(torch.float32)
        sh = self._col(self.sigma_hat, ks, sample)
        pred = sample - sh * eps
        derivative = (sample - pred) / sh
        return (sample + derivative * self._col(self.dt, ks, sample)).to(eps.dtype)


class SlotDPMSolver2M(SlotSampler):
    """diffusers' DPMSolverMultistepScheduler as DPM-Solver++(2M): algorithm dpmsolver++,
    solver_order 2, midpoint, epsilon prediction; first order at the first call and
    where diffusers lowers the order at the end. History: the last x0 per slot."""

    name = "dpmpp2m"

    def __init__(self, scheduler, steps: int, capacity: int):
        super().__init__(scheduler, steps, capacity)
        s, c = self.sched, self.sched.config
        if (c.algorithm_type != "dpmsolver++" or c.solver_order != 2 or c.solver_type != "midpoint"
                or c.prediction_type != "epsilon" or c.thresholding
                or c.variance_type in ("learned", "learned_range")):
            raise UserError("slot DPM-Solver supports dpmsolver++, order 2, midpoint, epsilon only")
        n = self.n_calls
        sig = s.sigmas

        def alpha_sigma(v):
            return s._sigma_to_alpha_sigma_t(v)

        self.first_order = [k == 0 or (k == n - 1 and (c.euler_at_final or (c.lower_order_final and n < 15)
                                                        or c.final_sigmas_type == "zero"))
                            for k in range(n)]
        a_s, s_s, A, B, C, R = [], [], [], [], [], []
        for k in range(n):
            alpha_t, sigma_t = alpha_sigma(sig[k + 1])
            alpha_s0, sigma_s0 = alpha_sigma(sig[k])
            a_s.append(alpha_s0)
            s_s.append(sigma_s0)
            lam_t = torch.log(alpha_t) - torch.log(sigma_t)
            lam_s0 = torch.log(alpha_s0) - torch.log(sigma_s0)
            h = lam_t - lam_s0
            A.append(sigma_t / sigma_s0)
            B.append(alpha_t * (torch.exp(-h) - 1.0))
            C.append(0.5 * (alpha_t * (torch.exp(-h) - 1.0)))
            if k >= 1:
                alpha_s1, sigma_s1 = alpha_sigma(sig[k - 1])
                lam_s1 = torch.log(alpha_s1) - torch.log(sigma_s1)
                R.append(1.0 / ((lam_s0 - lam_s1) / h))
            else:
                R.append(torch.zeros((), dtype=h.dtype))
        self.alpha_s, self.sigma_s = torch.stack(a_s), torch.stack(s_s)
        self.A, self.B, self.C, self.R = (torch.stack(v).to(torch.float32) for v in (A, B, C, R))
        self.alpha_s, self.sigma_s = self.alpha_s.to(torch.float32), self.sigma_s.to(torch.float32)
        self.prev_x0: list[torch.Tensor | None] = [None] * capacity

    def _reset(self, slot):
        self.prev_x0[slot] = None

    def _update(self, slots, eps, x):
        ks = [self.k[s] for s in slots]
        x0 = (x - self._col(self.sigma_s, ks, x) * eps) / self._col(self.alpha_s, ks, x)
        sample = x.to(torch.float32)
        out = torch.empty_like(sample)
        for first, rows in self._groups(slots, lambda s: self.first_order[self.k[s]]).items():
            kr = [ks[i] for i in rows]
            m0, smp = x0[rows], sample[rows]
            if first:
                out[rows] = self._col(self.A, kr, smp) * smp - self._col(self.B, kr, smp) * m0
            else:
                m1 = torch.cat([self.prev_x0[slots[i]] for i in rows])
                d1 = self._col(self.R, kr, smp) * (m0 - m1)
                out[rows] = (self._col(self.A, kr, smp) * smp - self._col(self.B, kr, smp) * m0
                             - self._col(self.C, kr, smp) * d1)
        for j, s in enumerate(slots):
            self.prev_x0[s] = x0[j:j + 1]
        return out.to(eps.dtype)


SLOT_SAMPLERS = {"PNDMScheduler": SlotPNDM, "DDIMScheduler": SlotDDIM,
                 "EulerDiscreteScheduler": SlotEuler, "DPMSolverMultistepScheduler": SlotDPMSolver2M}


def slot_sampler_for(scheduler, steps: int, capacity: int) -> SlotSampler:
    """The slot sampler equal to `scheduler` (a diffusers scheduler) at `steps` steps."""
    cls = SLOT_SAMPLERS.get(type(scheduler).__name__)
    if cls is None:
        raise UserError(f"continuous batching has no per-slot version of {type(scheduler).__name__}; "
                        f"use one of {sorted(SLOT_SAMPLERS)} or --executor inprocess")
    return cls(scheduler, steps, capacity)


def make_scheduler(name: str, base):
    """A diffusers scheduler of kind `name` (pndm | ddim | euler | dpmpp2m | unipc) with `base`'s
    noise schedule (betas, timestep spacing). unipc has no per-slot version: the in-process
    executor runs it."""
    import diffusers

    kinds = {"pndm": "PNDMScheduler", "ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler",
             "dpmpp2m": "DPMSolverMultistepScheduler", "unipc": "UniPCMultistepScheduler"}
    if name not in kinds:
        raise UserError(f"unknown sampler {name!r}; use one of {sorted(kinds)}")
    cls = getattr(diffusers, kinds[name])
    if type(base).__name__ == kinds[name]:
        return base
    extra = {"skip_prk_steps": True} if name == "pndm" else {}
    if name == "dpmpp2m":
        extra = {"algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint"}
    if name == "ddim":
        extra = {"clip_sample": False}
    return cls.from_config({**base.config, **extra})


__all__ = ["SlotSampler", "SlotPNDM", "SlotDDIM", "SlotEuler", "SlotDPMSolver2M",
           "SLOT_SAMPLERS", "slot_sampler_for", "make_scheduler"]
