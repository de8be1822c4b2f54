"""The fused CFG + scheduler update kernel: C++ (CPU), CUDA and numpy twins agree,
and its linear form reproduces the per-slot samplers' updates."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from rv2 import _native
from rv2.generate.slot_samplers import make_scheduler, slot_sampler_for
from rv2.models.sd import pndm_scheduler
from rv2.runtime.generation_bodies import guided_update_tensors

feats = _native.features()


def _data(n=5, shape=(4, 7, 6), seed=0):
    rng = np.random.default_rng(seed)
    f = np.float32
    return (rng.standard_normal((n, *shape)).astype(f), rng.standard_normal((n, *shape)).astype(f),
            rng.standard_normal((n, *shape)).astype(f), rng.standard_normal((n, 3, *shape)).astype(f),
            rng.standard_normal(n).astype(f), rng.standard_normal(n).astype(f),
            rng.standard_normal((n, 4)).astype(f))


@pytest.mark.skipif(not feats["guided_update"], reason="rv2._C has no guided_update")
@pytest.mark.parametrize("n", [0, 1, 5])
def test_cpu_kernel_equals_numpy_twin(n):
    eu, ec, x, h, A, B, W = _data(n)
    got = _native.native_module().guided_update(eu, ec, 3.5, x, h, A, B, W)
    want = _native.guided_update_py(eu, ec, 3.5, x, h, A, B, W)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == np.float32
        np.testing.assert_array_equal(g, w)


@pytest.mark.skipif(not feats["guided_update"], reason="rv2._C has no guided_update")
def test_cpu_kernel_rejects_mismatched_shapes():
    eu, ec, x, h, A, B, W = _data(3)
    with pytest.raises(ValueError, match="hist"):
        _native.native_module().guided_update(eu, ec, 2.0, x, h[:, :2], A, B, W)
    with pytest.raises(ValueError, match="A and B"):
        _native.native_module().guided_update(eu, ec, 2.0, x, h, A[:2], B, W)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not feats["guided_update_cuda"],
                    reason="needs a CUDA GPU and rv2._C built for cuda")
def test_cuda_kernel_equals_cpu_twin():
    eu, ec, x, h, A, B, W = (torch.from_numpy(a) for a in _data(6, (4, 64, 64)))
    cuda = guided_update_tensors(eu.cuda(), ec.cuda(), 4.0, A.cuda(), B.cuda(), W.cuda(), x.cuda(), h.cuda())
    torch.cuda.synchronize()
    cpu = _native.guided_update_py(eu.numpy(), ec.numpy(), 4.0, x.numpy(), h.numpy(), A.numpy(),
                                   B.numpy(), W.numpy())
    for c, p in zip(cuda, cpu):
        np.testing.assert_allclose(c.cpu().numpy(), p, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["pndm", "ddim", "euler"])
def test_linear_form_reproduces_the_slot_update(kind):
    """Steps of staggered slots: the fused kernel's update equals the sampler's own
    update (to float rounding), history included."""
    sched = make_scheduler(kind, pndm_scheduler())
    steps, cap, g = 8, 3, 3.0
    a, b = slot_sampler_for(sched, steps, cap), slot_sampler_for(sched, steps, cap)
    gen = torch.Generator().manual_seed(1)
    xa = torch.randn((cap, 4, 5, 5), generator=gen)
    xb = xa.clone()
    for s in range(cap):
        a.k[s] = b.k[s] = 0
    for step in range(steps + 1):
        slots = [s for s in range(cap) if step >= s and not a.done(s)]  # slot s joins at step s
        for s in slots:
            if a.k[s] == 0:
                xa[s] = a.start(s, xa[s:s + 1])[0]
                xb[s] = b.start(s, xb[s:s + 1])[0]
        eu = torch.randn((len(slots), 4, 5, 5), generator=gen)
        ec = torch.randn((len(slots), 4, 5, 5), generator=gen)
        xa[slots] = a.step(slots, eu + g * (ec - eu), xa[slots])
        terms = b.fused_terms(slots, xb[slots])
        new, e = guided_update_tensors(eu, ec, g, *terms)
        b.advance(slots, e, xb[slots])
        xb[slots] = new
        torch.testing.assert_close(xb, xa, rtol=1e-5, atol=1e-5)


def test_images_to_uint8_equals_per_image_conversion():
    from rv2.generate.stages import images_to_uint8

    x = torch.rand((3, 1, 9, 7)) * 1.2 - 0.1
    x[0, 0, 0, 0] = float("nan")
    got = images_to_uint8(x)
    assert got.dtype == np.uint8 and got.shape == (3, 1, 9, 7)
    for i in range(3):
        np.testing.assert_array_equal(got[i], _native.to_uint8_py(x[i].numpy()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not feats["to_uint8_cuda"],
                    reason="needs a CUDA GPU and rv2._C built for cuda")
def test_images_to_uint8_on_cuda_equals_cpu():
    from rv2.generate.stages import images_to_uint8

    x = torch.rand((4, 3, 64, 64)) * 1.2 - 0.1
    np.testing.assert_array_equal(images_to_uint8(x.cuda()), images_to_uint8(x))
