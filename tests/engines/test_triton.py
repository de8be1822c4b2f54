"""--format triton: a Triton model repository that Triton's own schema accepts."""
from __future__ import annotations

import pytest

from rv2.engines.triton import write_repository


def test_repository_parses_with_tritons_model_config(demo_engines, tmp_path):
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                           reason="needs tritonclient[grpc] (rv2[test])")
    from google.protobuf import text_format

    repo = write_repository(demo_engines["out"], tmp_path / "triton")
    names = sorted(p.name for p in repo.iterdir())
    assert names == ["classifier", "qc_age", "qc_race", "qc_sex"]
    for name in names:
        cfg = text_format.Parse((repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert cfg.name == name and cfg.platform == "onnxruntime_onnx"
        assert (repo / name / "1" / "model.onnx").is_file()
        assert cfg.dynamic_batching.max_queue_delay_microseconds > 0
        assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    clf = text_format.Parse((repo / "classifier" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert clf.max_batch_size == 32 and list(clf.dynamic_batching.preferred_batch_size) == [8, 32]
    assert clf.input[0].name == "pixels" and list(clf.input[0].dims) == [1, 32, 32]
    assert clf.input[0].data_type == model_config_pb2.TYPE_FP32
    assert clf.output[0].name == "logits" and list(clf.output[0].dims) == [14]
    sex = text_format.Parse((repo / "qc_sex" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert list(sex.output[0].dims) == [1] and list(sex.output[0].reshape.shape) == []
    assert list(sex.input[0].dims) == [1, 64, 64]
