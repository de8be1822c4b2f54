"""Stand-in QC networks for tests: image-dependent toy heads and constant bundles."""
from __future__ import annotations

import torch
import torch.nn as nn

from rv2.models import qc_networks as qc


class MeanNet(nn.Module):
    """A stand-in QC net whose output depends on the image: logits/years from the
    mean intensity, so different seeds give different verdicts."""

    def __init__(self, n_out: int, scale: float = 200.0, offset: float = 0.0):
        super().__init__()
        self.n_out, self.scale, self.offset = n_out, scale, offset

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        if self.n_out == 1:
            return (self.offset + self.scale * m)[:, None]
        # logits of class k: -(k - scale * frac(m)) ^ 2, so the argmax moves with m
        k = torch.arange(self.n_out, dtype=x.dtype, device=x.device)[None]
        pos = (self.scale * m)[:, None] % self.n_out
        return -(k - pos) ** 2


def mean_qc(input_size: int = 16):
    return qc.QCModels(sex=qc.SexModel(MeanNet(2, 7.0), "xrv", input_size, None),
                       race=qc.RaceModel(MeanNet(3, 11.0), "xrv", input_size, None),
                       age=qc.AgeModel(MeanNet(1, 100.0, 20.0), "xrv", input_size, None),
                       model_id="mean-net", model_hash="meannet")


def constant_bundle(path, p_female_logit: float = 5.0, race_idx: int = 2, age: float = 50.0):
    """A QC bundle of SmallCNNs whose heads ignore the image (zero weights): always
    female, always `race_idx`, always `age` years."""
    nets = {k: qc.SmallCNN(3, 4, qc.N_OUT[k]) for k in ("sex", "race", "age")}
    with torch.no_grad():
        for n in nets.values():
            n.head.weight.zero_()
            n.head.bias.zero_()
        nets["sex"].head.bias[1] = p_female_logit
        nets["race"].head.bias[race_idx] = 5.0
        nets["age"].head.bias[0] = age
    spec = {k: {"arch": "SmallCNN", "kwargs": {"in_ch": 3, "width": 4, "n_out": qc.N_OUT[k]},
                "input_size": 16} for k in nets}
    spec["pre_size"] = None
    return qc.save_qc_bundle(path, nets["sex"], nets["race"], nets["age"], spec)
