"""Per-slot schedulers equal diffusers' batch-synchronous ones, row by row, whatever
step each slot is at (continuous batching)."""
from __future__ import annotations

import pytest
import torch
from rv2.generate.sampler import denoise
from rv2.generate.slot_samplers import make_scheduler, slot_sampler_for
from rv2.models.sd import pndm_scheduler

SHAPE = (4, 6, 6)


class RowDenoiser:
    """A noise predictor whose row i depends on row i alone (x, t, context): any
    batch grouping gives the same numbers, so trajectories can be compared exactly."""

    device, dtype, in_channels, sample_size = torch.device("cpu"), torch.float32, 4, 6

    def predict_noise(self, x, t, ctx):
        t = torch.as_tensor(t, dtype=torch.float32).expand(x.shape[0]).view(-1, 1, 1, 1)
        return torch.tanh(0.7 * x + t / 700.0 + ctx.mean(dim=(1, 2)).view(-1, 1, 1, 1))


def _items(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn((n, *SHAPE), generator=g)
    cond = torch.randn((n, 5, 3), generator=g)
    return lat, cond


def continuous(sampler, lat, cond, uncond, guidance, capacity, join_every=1):
    """Items join free slots at step boundaries, at most one new item per `join_every`
    steps (to stagger them); returns each item's final sample."""
    den, n = RowDenoiser(), lat.shape[0]
    x = torch.zeros((capacity, *SHAPE))
    ctx = torch.zeros((capacity, *cond.shape[1:]))
    owner: dict[int, int] = {}
    out = [None] * n
    nxt, step = 0, 0
    while nxt < n or owner:
        for s in range(capacity):
            if s not in owner and nxt < n and step % join_every == 0:
                owner[s] = nxt
                x[s] = sampler.start(s, lat[nxt:nxt + 1])[0]
                ctx[s] = cond[nxt]
                nxt += 1
                if join_every > 1:
                    break
        slots = sorted(owner)
        rows = x[slots]
        inp = sampler.scale_input(slots, rows)
        t = sampler.timesteps_for(slots, "cpu")
        if guidance > 1:
            c = torch.cat([uncond.expand(len(slots), -1, -1), ctx[slots]])
            e = den.predict_noise(torch.cat([inp, inp]), torch.cat([t, t]), c)
            eu, ec = e.chunk(2)
            e = eu + guidance * (ec - eu)
        else:
            e = den.predict_noise(inp, t, ctx[slots])
        x[slots] = sampler.step(slots, e, rows)
        for s in slots:
            if sampler.done(s):
                out[owner.pop(s)] = x[s].clone()
        step += 1
    return torch.stack(out)


@pytest.mark.parametrize("kind", ["pndm", "ddim", "euler", "dpmpp2m"])
@pytest.mark.parametrize("steps", [1, 2, 3, 7, 20])
def test_slot_sampler_equals_diffusers_batch(kind, steps):
    sched = make_scheduler(kind, pndm_scheduler())
    lat, cond = _items(7, seed=steps)
    uncond = torch.randn((1, 5, 3), generator=torch.Generator().manual_seed(99))
    ref = denoise(RowDenoiser(), sched, cond, uncond, lat, steps, 3.0)
    for capacity, join_every in ((3, 1), (4, 2), (8, 1)):
        got = continuous(slot_sampler_for(sched, steps, capacity), lat, cond, uncond, 3.0,
                         capacity, join_every)
        torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_pndm_history_is_per_slot_not_shared():
    """Two slots at different phases (first step, PLMS order 4) in one call."""
    sched = pndm_scheduler()
    lat, cond = _items(2, seed=5)
    ref = denoise(RowDenoiser(), sched, cond, None, lat, 10, 1.0)
    got = continuous(slot_sampler_for(sched, 10, 2), lat, cond, None, 1.0, 2, join_every=6)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_unknown_scheduler_is_a_user_error():
    from diffusers import LMSDiscreteScheduler
    from rv2.errors import UserError

    with pytest.raises(UserError, match="no per-slot version of LMSDiscreteScheduler"):
        slot_sampler_for(LMSDiscreteScheduler(), 5, 2)
