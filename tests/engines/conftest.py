"""Engines built once per test session from the bundled demo models (CPU)."""
from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import pytest

DEMO = Path(str(files("rv2.demo") / "weights"))


def make_classifier(folder: Path, image_size: int = 32, seed: int = 0) -> Path:
    """A random-weight DenseNet-121 classifier folder, as `rv2 train-classifier` writes one."""
    import torch
    from rv2.classify import model_dir as md
    from rv2.data.schema import CHEXPERT_LABELS
    from rv2.models.densenet import densenet121, model_config

    torch.manual_seed(seed)
    model = densenet121(len(CHEXPERT_LABELS)).eval()
    folder.mkdir(parents=True, exist_ok=True)
    md.save_weights(model, folder / md.WEIGHTS)
    (folder / md.MODEL_CONFIG).write_text(json.dumps(model_config(CHEXPERT_LABELS, image_size, 0.45, 0.22)))
    (folder / md.THRESHOLDS).write_text(json.dumps({"labels": list(CHEXPERT_LABELS),
                                                    "thresholds": [0.5] * len(CHEXPERT_LABELS),
                                                    "rule": ">="}))
    return folder


@pytest.fixture(scope="session")
def classifier_dir(tmp_path_factory) -> Path:
    return make_classifier(tmp_path_factory.mktemp("clf") / "model")


@pytest.fixture(scope="session")
def demo_engines(tmp_path_factory, classifier_dir):
    """ONNX Runtime engines of the demo generator, QC bundle and a tiny classifier,
    with the end-to-end parity check (6 steps, 8 prompts)."""
    from rv2.engines.build import Sources, build_engines
    from rv2.engines.profile import load_profile

    out = tmp_path_factory.mktemp("engines") / "demo"
    lines: list[str] = []
    index = build_engines(load_profile("demo"), out,
                          Sources(generator=DEMO / "generator", qc_dir=DEMO / "qc",
                                  classifier=classifier_dir),
                          backends=["onnxruntime"], e2e_steps=6, e2e_prompts_n=8, echo=lines.append)
    return {"out": out, "index": index, "log": "\n".join(lines), "classifier": classifier_dir}
