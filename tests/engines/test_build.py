"""rv2 build-engines on the demo models: ONNX Runtime engines, manifests, parity
gates, cache hits, and generation / prediction running from the engines."""
from __future__ import annotations

import json

import numpy as np
import torch

from rv2.engines import manifest as mf
from rv2.engines.build import Sources, build_engines
from rv2.engines.profile import COMPONENTS, load_profile
from rv2.engines.runtime import load

from .conftest import DEMO


def test_every_component_built_with_a_manifest_and_passing_parity(demo_engines):
    index = demo_engines["index"]
    assert set(index["components"]) == set(COMPONENTS)
    for comp, entry in index["components"].items():
        assert entry["selected"] == "onnxruntime"
        m = mf.read_manifest(demo_engines["out"] / entry["engines"]["onnxruntime"])
        assert m["component"] == comp and m["backend"] == "onnxruntime" and m["precision"] == "fp32"
        assert m["parity"]["passed"] and m["parity"]["tolerance"] == 1e-4
        for per_batch in m["parity"]["figures"].values():
            for fig in per_batch.values():
                assert fig["finite"] and fig["rel_max"] <= 1e-4
        assert set(m["parity"]["figures"]) == {str(b) for b in m["batch_range"]}
        assert m["machine"]["onnxruntime"] and m["machine"]["torch"] == torch.__version__
        assert m["onnx"]["opset"] == 17 and m["onnx"]["ir_version"] == 8
        assert len(m["sources"]["sha256"]) == 64 and len(m["onnx"]["sha256"]) == 64
        assert m["profile_shapes"][m["inputs"][0]["name"]]["max"][0] == m["batch_range"][1]
    e2e = index["end_to_end"]["backends"]["onnxruntime"]
    assert e2e["passed"] and e2e["pixels_within_2"] >= 0.99 and e2e["same_verdict"] >= 0.99
    assert "component     backend" in demo_engines["log"]  # the parity table


def test_onnx_is_pinned_for_onnxruntime_1_31(demo_engines):
    import onnx

    model = onnx.load(str(demo_engines["out"] / "unet" / "model.onnx"))
    assert model.ir_version == 8
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    names = [i.name for i in model.graph.input]
    assert names == ["sample", "timestep", "context"]
    assert model.graph.input[1].type.tensor_type.shape.dim[0].dim_param  # per-sample timestep


def test_rebuild_with_nothing_changed_is_a_cache_hit(demo_engines, classifier_dir):
    lines: list[str] = []
    index = build_engines(load_profile("demo"), demo_engines["out"],
                          Sources(generator=DEMO / "generator", qc_dir=DEMO / "qc",
                                  classifier=classifier_dir),
                          backends=["onnxruntime"], e2e_steps=6, e2e_prompts_n=8, echo=lines.append)
    log = "\n".join(lines)
    assert "exported ONNX" not in log and "built in" not in log
    assert log.count(": cached in") == len(COMPONENTS) and "end to end: cached" in log
    assert index["components"]["unet"]["selected"] == "onnxruntime"


def test_a_changed_source_rebuilds_only_its_engine(tmp_path, classifier_dir):
    import shutil

    from .conftest import make_classifier

    clf = tmp_path / "clf"
    shutil.copytree(classifier_dir, clf)
    out = tmp_path / "eng"
    kw = dict(backends=["onnxruntime"], e2e_steps=0)
    build_engines(load_profile("demo"), out, Sources(classifier=clf), echo=lambda s: None, **kw)
    make_classifier(clf, seed=1)   # other weights, same files
    lines: list[str] = []
    build_engines(load_profile("demo"), out, Sources(classifier=clf), echo=lines.append, **kw)
    assert any(line.startswith("classifier: exported ONNX") for line in lines)


def test_generation_runs_unchanged_from_the_engines(demo_engines, tmp_path):
    """generate_dataset with the engines' StageSet: same images as eager within the gate."""
    from rv2.generate.config import GenerateConfig
    from rv2.generate.pipeline import generate_dataset
    from rv2.testing.prompts import prompts_table

    df = prompts_table(4)
    cfg = GenerateConfig().override(["sampler.steps=4", "sampler.guidance=3.0", "batch_size=4",
                                     "max_attempts=1", "sampler.device=\"cpu\""])
    engines = load(demo_engines["out"])
    engines.check_generator(DEMO / "generator")
    stages = engines.stages()
    assert type(stages.qc).__name__ == "EngineQC"
    s_eng = generate_dataset(df, DEMO / "generator", tmp_path / "eng", cfg, stages=stages, progress=False)
    s_eag = generate_dataset(df, DEMO / "generator", tmp_path / "eager", cfg, qc_models=_eager_qc(),
                             progress=False)
    assert s_eng["qc_model"].startswith("engines:") and not s_eag["qc_model"].startswith("engines:")
    import pandas as pd
    from PIL import Image

    m_eng = pd.read_parquet(tmp_path / "eng" / "manifest.parquet").set_index("prompt_id")
    m_eag = pd.read_parquet(tmp_path / "eager" / "manifest.parquet").set_index("prompt_id")
    assert list(m_eng.index) == list(m_eag.index)
    assert (m_eng["qc_pass"] == m_eag["qc_pass"]).all()
    for pid in m_eng.index[m_eng["qc_pass"].astype(bool)]:
        a = np.asarray(Image.open(tmp_path / "eng" / m_eng.loc[pid, "path"]), np.int16)
        b = np.asarray(Image.open(tmp_path / "eager" / m_eag.loc[pid, "path"]), np.int16)
        assert (np.abs(a - b) <= 2).mean() >= 0.99


def _eager_qc():
    from rv2.models.qc_networks import load_qc_models

    return load_qc_models(DEMO / "qc")


def test_predict_runs_from_the_classifier_engine(demo_engines):
    from rv2.classify.predictor import Predictor

    engines = load(demo_engines["out"])
    p_eng = engines.predictor(demo_engines["classifier"])
    assert p_eng.backend.name == "engine:onnxruntime" and p_eng.backend.max_batch_size == 32
    p_eag = Predictor.load(demo_engines["classifier"], "cpu")
    rng = np.random.default_rng(0)
    images = [rng.random((40, 36)).astype(np.float32) for _ in range(37)]  # > max batch: split
    a, b = p_eng.predict_images(images), p_eag.predict_images(images)
    assert a.shape == (37, 14)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_bench_serve_peer_serves_the_graph_rv2s_engine_loads(demo_engines):
    """tools/bench_serve.py gives the Triton peer the classifier engine's own ONNX file
    (it once looked for a file the build never writes, and Triton silently dropped out)."""
    import hashlib
    import importlib.util
    from pathlib import Path

    import onnxruntime as ort

    tool = Path(__file__).resolve().parents[2] / "tools" / "bench_serve.py"
    spec = importlib.util.spec_from_file_location("bench_serve_for_test", tool)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    graph = bench.peer_graph(demo_engines["out"])
    m = mf.read_manifest(demo_engines["out"] / "classifier" / "onnxruntime")
    assert hashlib.sha256(graph.read_bytes()).hexdigest() == m["onnx"]["sha256"]
    sess = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((2, *m["inputs"][0]["shape"][1:])).astype(np.float32)
    assert sess.run(None, {sess.get_inputs()[0].name: x})[0].shape == (2, 14)


def test_rv2_predict_and_generate_cli_with_engines(demo_engines, tmp_path):
    from click.testing import CliRunner
    from PIL import Image
    import pandas as pd

    from rv2.cli import main
    from rv2.data.schema import CHEXPERT_LABELS, age_bin
    from rv2.testing.prompts import prompts_table

    (tmp_path / "img").mkdir()
    rows = []
    for i in range(3):
        Image.fromarray((np.random.default_rng(i).random((40, 40)) * 255).astype(np.uint8)).save(
            tmp_path / "img" / f"{i}.png")
        rows.append({"image_id": f"i{i}", "path": f"img/{i}.png", "patient_id": f"p{i}",
                     "study_id": f"s{i}", "dataset": "test", "view": "PA", "sex": "F", "age": 50.0,
                     "age_bin": age_bin(50.0), "race": "White", "split": "test",
                     **{lab: np.nan for lab in CHEXPERT_LABELS}})
    pd.DataFrame(rows).to_parquet(tmp_path / "m.parquet")
    r = CliRunner().invoke(main, ["predict", "--model", str(demo_engines["classifier"]), "--manifest",
                                  str(tmp_path / "m.parquet"), "--out", str(tmp_path / "p.parquet"),
                                  "--engines", str(demo_engines["out"]), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert len(pd.read_parquet(tmp_path / "p.parquet")) == 3
    prompts_table(2).to_parquet(tmp_path / "prompts.parquet")
    r = CliRunner().invoke(main, ["generate", "--prompts", str(tmp_path / "prompts.parquet"), "--model",
                                  str(DEMO / "generator"), "--out", str(tmp_path / "store"), "--steps", "3",
                                  "--guidance", "3", "--device", "cpu", "--max-attempts", "1",
                                  "--no-progress", "--engines", str(demo_engines["out"])])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "store" / "summary.json").read_text())["qc_model"].startswith("engines:")
