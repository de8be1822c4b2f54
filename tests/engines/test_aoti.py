"""AOTInductor engines on CPU: one tiny QC net in `make test` (a compile takes tens of
seconds on 2 cores); every demo component, end to end, in the slow tier."""
from __future__ import annotations

import pytest
import torch

from rv2.engines import manifest as mf
from rv2.engines.build import Sources, build_engines
from rv2.engines.profile import COMPONENTS, load_profile
from rv2.engines.runtime import load

from .conftest import DEMO


@pytest.fixture(scope="session")
def aoti_qc_sex(tmp_path_factory):
    out = tmp_path_factory.mktemp("aoti") / "eng"
    index = build_engines(load_profile("demo"), out, Sources(qc_dir=DEMO / "qc"),
                          backends=["aotinductor"], only=["qc_sex"], echo=lambda s: None)
    return out, index


def test_aoti_engine_builds_passes_parity_and_runs_with_a_dynamic_batch(aoti_qc_sex):
    out, index = aoti_qc_sex
    assert list(index["components"]) == ["qc_sex"]
    assert index["components"]["qc_sex"]["selected"] == "aotinductor"
    m = mf.read_manifest(out / "qc_sex" / "aotinductor")
    assert m["parity"]["passed"] and m["machine"]["cpu_isa"] == mf.cpu_isa()
    assert m["files"][0]["file"] == "model.pt2" and m["onnx"] is None
    runner = load(out).runner("qc_sex")
    assert runner.backend == "aotinductor"
    from rv2.models.qc_networks import load_qc_models

    eager = load_qc_models(DEMO / "qc").sex
    for n in (1, 3, 8):   # every batch in the profile's range, not only the built ones
        x = torch.rand(n, 1, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(runner(x)[0], eager(x), atol=1e-5, rtol=1e-4)


def test_aoti_cache_hit(aoti_qc_sex):
    out, _ = aoti_qc_sex
    lines: list[str] = []
    build_engines(load_profile("demo"), out, Sources(qc_dir=DEMO / "qc"), backends=["aotinductor"],
                  only=["qc_sex"], echo=lines.append)
    assert any("qc_sex [aotinductor]: cached" in line for line in lines)


@pytest.mark.slow
def test_every_demo_component_as_aoti_end_to_end(tmp_path, classifier_dir):
    index = build_engines(load_profile("demo"), tmp_path / "eng",
                          Sources(generator=DEMO / "generator", qc_dir=DEMO / "qc",
                                  classifier=classifier_dir),
                          backends=["aotinductor"], e2e_steps=6, e2e_prompts_n=8, echo=print)
    assert all(index["components"][c]["selected"] == "aotinductor" for c in COMPONENTS)
    assert index["end_to_end"]["backends"]["aotinductor"]["passed"]


@pytest.mark.gpu
@pytest.mark.compile
def test_cuda_engines_onnxruntime_and_aoti(tmp_path):
    """On a GPU: fp16 ONNX (CUDA EP when onnxruntime-gpu is installed) and AOTInductor."""
    from rv2.engines.profile import TargetProfile

    prof = TargetProfile(target="demo-cuda", device="cuda", precision="fp16",
                         backends=["aotinductor", "onnxruntime"],
                         components=load_profile("demo").components).validate()
    import onnxruntime as ort

    backends = ["aotinductor"] + (["onnxruntime"] if "CUDAExecutionProvider"
                                  in ort.get_available_providers() else [])
    index = build_engines(prof, tmp_path / "eng", Sources(generator=DEMO / "generator", qc_dir=DEMO / "qc"),
                          backends=backends, e2e_steps=10, e2e_prompts_n=16, echo=print)
    assert index["end_to_end"]["backends"]["aotinductor"]["passed"]


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.compile
def test_tensorrt_plans(tmp_path, classifier_dir):
    from rv2.engines.profile import TargetProfile

    prof = TargetProfile(target="demo-trt", device="cuda", precision="fp16", backends=["tensorrt"],
                         components=load_profile("demo").components).validate()
    index = build_engines(prof, tmp_path / "eng", Sources(qc_dir=DEMO / "qc", classifier=classifier_dir),
                          echo=print)
    assert index["components"]["classifier"]["selected"] == "tensorrt"
    assert (tmp_path / "eng" / "classifier" / "tensorrt" / "timing.cache").is_file()
