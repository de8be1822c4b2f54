"""The exported graphs match the eager modules they fold (no engine needed)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rv2.export.graphs import qc_graphs, resize_matrix, run_reference
from rv2.models.qc_networks import stand_in_qc_models


@pytest.mark.parametrize("n_in,n_out", [(64, 32), (64, 48), (30, 64), (512, 224)])
def test_resize_matrix_is_torchs_antialiased_resize(n_in, n_out):
    x = torch.rand(2, 1, n_in, n_in)
    r = resize_matrix(n_in, n_out)
    ref = F.interpolate(x, size=(n_out, n_out), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(r @ x @ r.T, ref, atol=2e-5, rtol=1e-4)  # float32 sums over up to 512 taps


@pytest.mark.parametrize("convention,pre_size", [("authors", 48), ("authors", None), ("xrv", None)])
def test_qc_graphs_fold_each_convention(convention, pre_size):
    qc = stand_in_qc_models(input_size=32, convention=convention)
    for m in (qc.sex, qc.race, qc.age):
        m.pre_size = pre_size
    specs = qc_graphs(qc, 64)
    for name, spec in specs.items():
        x = spec.example(3)
        with torch.no_grad():
            out = spec.module(*x)
        ref = run_reference(spec, x)[0]
        assert out.shape == ref.shape == spec.outputs[0].with_batch(3)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4), name
