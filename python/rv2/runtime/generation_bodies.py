"""The stage bodies of QC'd generation for the pipeline scheduler
(`rv2.runtime.pipeline_scheduler` documents the contract).

They run the stages of a `StageRunner` on the items the scheduler hands them,
keeping each item's payload (text embedding, noise, latents, image, verdict,
record) under its token until the item is done. The denoiser runs one step at a
time over a fixed-capacity slot batch; each slot has its own timestep and
scheduler state (`rv2.generate.slot_samplers`), so an item's image equals the
in-process executor's for the same (prompt, attempt).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from rv2 import _native
from rv2.generate.sampler import latents_for
from rv2.generate.slot_samplers import slot_sampler_for
from rv2.generate.stages import StageRunner
from rv2.runtime.cuda_overlap import DenoiserGraph, StageStreams, check_cuda_options


def guided_update_tensors(eps_u, eps_c, guidance: float, A, B, W, sample, hist):
    """The fused CFG + update (`rv2._native.guided_update`) on torch tensors: the CUDA
    kernel on the current stream for CUDA tensors, else the CPU kernel (or its twin)."""
    f32 = torch.float32
    eu, ec = eps_u.to(f32).contiguous(), eps_c.to(f32).contiguous()
    x, h = sample.to(f32).contiguous(), hist.to(f32).contiguous()
    A, B, W = (v.to(device=x.device, dtype=f32).contiguous() for v in (A, B, W))
    n = x.shape[0]
    m = x.numel() // n if n else 0
    if x.is_cuda and _native.features()["guided_update_cuda"]:
        out, e = torch.empty_like(x), torch.empty_like(x)
        _native.native_module().guided_update_cuda(
            eu.data_ptr(), ec.data_ptr(), float(guidance), x.data_ptr(), h.data_ptr(), A.data_ptr(),
            B.data_ptr(), W.data_ptr(), out.data_ptr(), e.data_ptr(), n, m,
            torch.cuda.current_stream(x.device).cuda_stream)
        return out, e
    out, e = _native.guided_update(eu.cpu().numpy(), ec.cpu().numpy(), guidance, x.cpu().numpy(),
                                   h.cpu().numpy(), A.cpu().numpy(), B.cpu().numpy(), W.cpu().numpy())
    return torch.from_numpy(out).to(x.device), torch.from_numpy(e).to(x.device)


@dataclass
class _Item:
    prompt_id: str
    attempt: int
    seed: int
    cond: Any = None        # 77 x D text embedding
    latents: Any = None     # 1 x C x h x w: initial noise, then the final latents
    image: Any = None       # 1 x c x H x W in [0, 1]
    verdict: dict | None = None
    record: dict | None = None
    u8: Any = None          # the accepted image as uint8, until written
    event: Any = None       # CUDA event of the stage that made its payload (stage streams)
    slot: int | None = None  # its denoiser slot, while it holds one


class GenerationBodies:
    """Stage bodies over `runner` for `capacity` denoiser slots. `prompt_ids[i]` is
    prompt index i of the scheduler's items; `on_result(record, final)` is called
    once per finished attempt. `cuda_streams`, `cuda_graph`: `rv2.runtime.cuda_overlap`;
    `fixed_batch`: the graph's full-capacity step, without capturing it."""

    def __init__(self, runner: StageRunner, prompt_ids: Sequence[str], capacity: int,
                 on_result: Callable[[dict, bool], None] | None = None, fused: bool | None = None,
                 cuda_streams: bool = False, cuda_graph: bool = False, fixed_batch: bool = False):
        self.runner, self.prompt_ids, self.capacity = runner, list(prompt_ids), capacity
        self.on_result = on_result
        # The fused CFG + update kernel: by default on CUDA where rv2._C has it. Not
        # bit-equal to diffusers' update (its linear form rounds differently).
        dev = torch.device(runner.stages.denoiser.device)
        feats = _native.features()
        self.fused = (dev.type == "cuda" and feats["guided_update_cuda"]) if fused is None else fused
        plan, d = runner.plan, runner.stages.denoiser
        self.device, self.dtype = d.device, d.dtype
        self.cfg = plan.guidance > 1.0
        self.sampler = slot_sampler_for(runner.stages.scheduler, plan.steps, capacity)
        self.x = torch.zeros((capacity, *plan.latent_shape), device=self.device, dtype=self.dtype)
        self.ctx: torch.Tensor | None = None
        self.uncond: torch.Tensor | None = None
        self.slot_token: dict[int, int] = {}
        self.items: dict[int, _Item] = {}
        self.live: dict = {}
        writer = runner.writer
        self.direct = hasattr(writer, "reserve_path") and hasattr(writer, "encode") and hasattr(writer, "append")
        check_cuda_options(self.device, d, cuda_streams, cuda_graph)
        self.streams = StageStreams(torch.device(self.device), cuda_streams)
        self.graph = DenoiserGraph(d, capture=True) if cuda_graph else (
            DenoiserGraph(d, capture=False) if fixed_batch else None)

    # ---------------------------------------------------------------- stages
    def encode(self, batch: Sequence[tuple[int, int, int]]) -> None:
        work = [(self.prompt_ids[p], int(a)) for _, p, a in batch]
        with self.streams.stage("encode"):
            cond, uncond = self.runner.encode_text(work)
            if self.cfg and self.uncond is None:
                self.uncond = uncond
            plan = self.runner.plan
            lat, seeds = latents_for([p for p, _ in work], [a for _, a in work], plan.latent_shape,
                                     plan.base_seed, self.device, self.dtype)
            if self.ctx is None:
                self.ctx = torch.zeros((self.capacity, *cond.shape[1:]), device=self.device, dtype=cond.dtype)
        made = []
        for i, (tok, _, _) in enumerate(batch):
            pid, a = work[i]
            self.items[tok] = _Item(pid, a, seeds[i], cond[i], lat[i:i + 1])
            made.append(self.items[tok])
        self.streams.mark("encode", made)

    @torch.inference_mode()
    def step(self, joins: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        t0 = time.perf_counter()
        with self.streams.stage("denoise", [self.items[tok] for _, tok in joins]):
            finished = self._step(joins)
        self.streams.mark("denoise", [self.items[tok] for _, tok in finished])
        self.runner.add_time("denoise", time.perf_counter() - t0)
        return finished

    def _step(self, joins: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        s = self.sampler
        for slot, tok in joins:
            it = self.items[tok]
            self.streams.take(it.latents, it.cond, self.uncond)
            self.x[slot] = s.start(slot, it.latents)[0]
            self.ctx[slot] = it.cond
            it.cond = it.latents = None
            it.slot = slot
            self.slot_token[slot] = tok
        slots = sorted(self.slot_token)
        ks = [s.k[slot] for slot in slots]      # each slot's call, before this step
        rows = self.x[slots]
        inp = s.scale_input(slots, rows)
        t = s.timesteps_for(slots, self.device)
        den = self.runner.stages.denoiser
        terms = s.fused_terms(slots, rows) if (self.fused and self.cfg) else None
        if self.cfg:
            eps_u, eps_c = self._predict(den, slots, inp, t)
            if terms is not None:
                new, e = guided_update_tensors(eps_u, eps_c, self.runner.plan.guidance, *terms)
                s.advance(slots, e, rows)
                new = new.to(rows.dtype)
                guided = e
            else:
                eps = guided = eps_u + self.runner.plan.guidance * (eps_c - eps_u)
        else:
            eps = guided = self._predict(den, slots, inp, t)[0]
        stopped = self._early_checks(slots, ks, inp, guided, t)
        if terms is None:
            new = s.step(slots, eps, rows)
        self.x[slots] = new
        finished = []
        for j, slot in enumerate(slots):
            if slot in stopped:     # early rejection: the slot is free from the next step
                tok = self.slot_token.pop(slot)
                it, c = self.items[tok], stopped[slot]
                it.image, it.verdict, it.slot = c.image, c.verdict, None
                finished.append((slot, tok))
            elif s.done(slot):
                tok = self.slot_token.pop(slot)
                it = self.items[tok]
                it.latents, it.slot = new[j:j + 1].clone(), None
                finished.append((slot, tok))
        return finished

    def _predict(self, den, slots: list[int], inp, t) -> tuple:
        """(eps_uncond, eps_cond) of the busy slots with CFG, else (eps,). With the
        denoiser graph every slot runs (the free ones on zeros) and the busy rows are taken."""
        cfg = self.cfg
        if self.graph is None:
            if not cfg:
                return (den.predict_noise(inp, t, self.ctx[slots]),)
            n = len(slots)
            context = torch.cat([self.uncond.expand(n, -1, -1).to(self.ctx.dtype), self.ctx[slots]])
            return den.predict_noise(torch.cat([inp, inp]), torch.cat([t, t]), context).chunk(2)
        cap = self.capacity
        x = inp.new_zeros((cap, *inp.shape[1:]))
        x[slots] = inp
        tt = t.new_zeros((cap, *t.shape[1:]))
        tt[slots] = t
        idx = torch.tensor(slots, device=inp.device)
        if not cfg:
            return (self.graph(x, tt, self.ctx)[idx],)   # indexing copies out of the graph's output
        context = torch.cat([self.uncond.expand(cap, -1, -1).to(self.ctx.dtype), self.ctx])
        out = self.graph(torch.cat([x, x]), torch.cat([tt, tt]), context)
        return out[idx], out[cap + idx]

    def _early_checks(self, slots, ks, inp, eps, t) -> dict:
        """Early QC checks of the slots due one after this call: {slot: Check} of those
        to stop (`rv2.generate.early_reject`)."""
        early = self.runner.early
        if early is None:
            return {}
        due = [j for j, k in enumerate(ks) if early.due(k)]
        if not due:
            return {}
        bases = [self.runner.base_records[self.items[self.slot_token[slots[j]]].prompt_id]
                 for j in due]
        checks = early.check(bases, [ks[j] for j in due], inp[due], eps[due], t[due])
        return {slots[due[c.row]]: c for c in checks if c.stop}

    def decode(self, tokens: Sequence[int]) -> None:
        its = [self.items[t] for t in tokens if self.items[t].image is None]  # not stopped early
        if not its:
            return
        with self.streams.stage("decode", its):
            self.streams.take(*(it.latents for it in its))
            images = self.runner.decode(torch.cat([it.latents for it in its]))
        for i, it in enumerate(its):
            it.latents, it.image = None, images[i:i + 1]
        self.streams.mark("decode", its)

    def judge(self, tokens: Sequence[int]) -> None:
        its = [self.items[t] for t in tokens if self.items[t].verdict is None]
        if not its:
            return
        with self.streams.stage("qc", its):
            self.streams.take(*(it.image for it in its))
            verdicts = self.runner.judge([(it.prompt_id, it.attempt) for it in its],
                                         torch.cat([it.image for it in its]))
        for it, v in zip(its, verdicts):
            it.verdict = v
        self.streams.mark("qc", its)

    def prepare_write(self, tokens: Sequence[int]) -> list[str | None]:
        """Records (and, for a store that lets others write its files, their paths)."""
        t0 = time.perf_counter()
        its = [self.items[t] for t in tokens]
        with self.streams.stage("write", its):   # the uint8 copy to the host ends the GPU's part
            self.streams.take(*(it.image for it in its))
            records, u8 = self.runner.records_for([(it.prompt_id, it.attempt) for it in its],
                                                  [it.seed for it in its],
                                                  torch.cat([it.image for it in its]),
                                                  [it.verdict for it in its])
        paths: list[str | None] = []
        w = self.runner.writer
        for it, rec, img in zip(its, records, u8):
            it.image, it.record, it.u8 = None, rec, img
            if self.direct:
                rec["path"] = w.reserve_path(rec["image_id"]) if rec["qc_pass"] else None
                paths.append(str(w.root / rec["path"]) if rec["qc_pass"] else None)
            else:
                paths.append(None)
        self.runner.add_time("write", time.perf_counter() - t0)
        return paths

    def encode_image(self, token: int) -> bytes:
        it = self.items[token]
        data, it.u8 = self.runner.writer.encode(it.u8), None
        return data

    def commit(self, tokens: Sequence[int]) -> list[bool]:
        """Journal the batch (its image files are on disk); the records as written."""
        t0 = time.perf_counter()
        its = [self.items[t] for t in tokens]
        w = self.runner.writer
        if self.direct:
            w.append([it.record for it in its])
        else:
            out = w.write([it.record for it in its], [it.u8 for it in its])
            for it, rec in zip(its, out):
                it.record, it.u8 = rec, None
        self.runner.add_time("write", time.perf_counter() - t0)
        return [bool(it.record["qc_pass"]) for it in its]

    def drop(self, tokens: Sequence[int]) -> None:
        """Forget speculative attempts that a pass made needless; a slot one held is free
        (the scheduler calls this for slotted tokens from the denoiser's thread only)."""
        for tok in tokens:
            it = self.items.pop(tok)
            if it.slot is not None:
                del self.slot_token[it.slot]

    def done(self, tokens: Sequence[int], finals: Sequence[bool], live: dict) -> None:
        self.live = dict(live)
        for tok, final in zip(tokens, finals):
            it = self.items.pop(tok)
            if self.on_result is not None:
                self.on_result(it.record, bool(final))


__all__ = ["GenerationBodies"]
