"""Stock tritonclient (HTTP and gRPC) against rv2 serve: metadata, tensors, real image files."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from google.protobuf import json_format, text_format
from rv2.data.schema import CHEXPERT_LABELS
from rv2.serve.protocol import parse_label_entry
from tritonclient.grpc import model_config_pb2

from .conftest import SIZE, bytes_input, clients, tensor_input

REAL_FILES = ["00000001_000.png", "00027426_000.png", "16747_3_1.jpg", "rv2demo_demo0002.jpg",
              "siim_sample.dcm"]


def test_health_and_metadata_http_and_grpc(server):
    h, g = clients(server)
    for c in (h, g):
        assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("classifier")
        assert not c.is_model_ready("classifier", "2") if c is h else True
    md = h.get_model_metadata("classifier")
    assert md["versions"] == ["1"] and md["platform"] == "rv2_torch"
    assert {t["name"]: (t["datatype"], t["shape"]) for t in md["inputs"]} == {
        "image": ("FP32", [-1, 3, SIZE, SIZE]), "image_bytes": ("BYTES", [-1])}
    assert {t["name"]: (t["datatype"], t["shape"]) for t in md["outputs"]} == {
        "probabilities": ("FP32", [-1, 14]), "labels": ("BYTES", [-1, -1])}
    assert md["parameters"]["labels"] == list(CHEXPERT_LABELS)
    gm = g.get_model_metadata("classifier")
    assert [(t.name, t.datatype, list(t.shape)) for t in gm.inputs] == [
        ("image", "FP32", [-1, 3, SIZE, SIZE]), ("image_bytes", "BYTES", [-1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in gm.outputs] == [
        ("probabilities", "FP32", [-1, 14]), ("labels", "BYTES", [-1, -1])]
    # labels for gRPC clients ride in the Triton model config
    cfg = g.get_model_config("classifier").config
    assert json.loads(cfg.parameters["labels"].string_value) == list(CHEXPERT_LABELS)
    assert cfg.max_batch_size == 8 and cfg.dynamic_batching.max_queue_delay_microseconds == 1000
    sm = h.get_server_metadata()
    assert sm["name"] == "rv2" and "binary_tensor_data" in sm["extensions"]
    assert g.get_server_metadata().name == "rv2"


def test_model_config_is_a_valid_triton_config(server):
    """The config (HTTP JSON) parses with Triton's own ModelConfig protobuf and round-trips
    through the config.pbtxt text form."""
    h, _ = clients(server)
    cfg = json_format.ParseDict(h.get_model_config("classifier"), model_config_pb2.ModelConfig())
    again = text_format.Parse(text_format.MessageToString(cfg), model_config_pb2.ModelConfig())
    assert again == cfg
    assert [i.name for i in cfg.input] == ["image", "image_bytes"]
    assert list(cfg.input[0].dims) == [3, SIZE, SIZE]
    assert cfg.output[0].data_type == model_config_pb2.TYPE_FP32


@pytest.mark.parametrize("proto", ["http", "http-json", "grpc"])
def test_infer_tensor_equals_the_predictor(server, predictor, proto):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 3, SIZE, SIZE)).astype(np.float32)
    want = predictor.predict_tensor(x)
    h, g = clients(server)
    if proto == "grpc":
        r = g.infer("classifier", [tensor_input(tg, x)])
    else:
        i = th.InferInput("image", list(x.shape), "FP32")
        i.set_data_from_numpy(x, binary_data=proto == "http")
        outs = None if proto == "http" else [th.InferRequestedOutput(n, binary_data=False)
                                            for n in ("probabilities", "labels")]
        r = h.infer("classifier", [i], outputs=outs)
    probs = r.as_numpy("probabilities")
    assert probs.dtype == np.float32 and probs.shape == (3, 14)
    np.testing.assert_allclose(probs, want, rtol=0, atol=1e-6)
    labels = r.as_numpy("labels")
    got = [[parse_label_entry(e)[2] for e in row if e not in (b"", "")] for row in labels]
    assert [sorted(r) for r in got] == [sorted(r) for r in predictor.positive_labels(probs)]
    for row in labels:  # "probability:index:label", highest first
        ps = [parse_label_entry(e)[0] for e in row if e not in (b"", "")]
        assert ps == sorted(ps, reverse=True)


def test_one_channel_tensor_is_replicated(server, predictor):
    x = np.random.default_rng(4).normal(size=(2, 1, SIZE, SIZE)).astype(np.float32)
    _, g = clients(server)
    probs = g.infer("classifier", [tensor_input(tg, x)]).as_numpy("probabilities")
    np.testing.assert_allclose(probs, predictor.predict_tensor(np.repeat(x, 3, 1)), atol=1e-6)


def test_classification_extension_top_k(server, predictor):
    x = np.random.default_rng(5).normal(size=(2, 3, SIZE, SIZE)).astype(np.float32)
    want = predictor.predict_tensor(x)
    h, g = clients(server)
    for mod, c in ((th, h), (tg, g)):
        r = c.infer("classifier", [tensor_input(mod, x)],
                    outputs=[mod.InferRequestedOutput("probabilities", class_count=3)])
        top = r.as_numpy("probabilities")
        assert top.shape == (2, 3)
        for i in range(2):
            idx = [parse_label_entry(e)[1] for e in top[i]]
            assert idx == list(np.argsort(-want[i], kind="stable")[:3])
            assert [parse_label_entry(e)[2] for e in top[i]] == [CHEXPERT_LABELS[j] for j in idx]


@pytest.fixture(scope="module")
def predicted_real(clf_dir, real_cxr):
    """`rv2 predict` (the library call behind it) on the real files."""
    from rv2.classify import predict

    df = pd.DataFrame({"image_id": REAL_FILES, "path": REAL_FILES})
    preds = predict(clf_dir, df, root=real_cxr, device="cpu", batch_size=1, progress=False)
    assert preds.attrs["skipped"].empty, preds.attrs["skipped"]
    return preds.set_index("image_id")[list(CHEXPERT_LABELS)]


@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_infer_png_jpeg_dicom_bytes_equal_rv2_predict(server, predictor, real_cxr, predicted_real, proto):
    h, g = clients(server)
    mod, c = (th, h) if proto == "http" else (tg, g)
    blobs = [(real_cxr / f).read_bytes() for f in REAL_FILES]
    for name, blob in zip(REAL_FILES, blobs):  # one file per request, as a PACS sends them
        r = c.infer("classifier", [bytes_input(mod, [blob])])
        np.testing.assert_allclose(r.as_numpy("probabilities")[0], predicted_real.loc[name].to_numpy(),
                                   rtol=0, atol=1e-6, err_msg=name)
        got = sorted(parse_label_entry(e)[2] for e in r.as_numpy("labels")[0] if e)
        want = sorted(predictor.positive_labels(predicted_real.loc[[name]].to_numpy())[0])
        assert got == want, name
    r = c.infer("classifier", [bytes_input(mod, blobs)])  # all five in one request
    np.testing.assert_allclose(r.as_numpy("probabilities"), predicted_real.loc[REAL_FILES].to_numpy(),
                               rtol=0, atol=1e-5)


def test_json_base64_image_bytes(server, real_cxr, predicted_real):
    import base64
    import urllib.request

    name = "00000001_000.png"
    body = {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1],
                        "data": [base64.b64encode((real_cxr / name).read_bytes()).decode()]}]}
    req = urllib.request.Request(f"http://127.0.0.1:{server.http_port}/v2/models/classifier/infer",
                                 data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=60) as resp:
        out = json.loads(resp.read())
    probs = {o["name"]: o for o in out["outputs"]}["probabilities"]
    assert probs["shape"] == [1, 14]
    np.testing.assert_allclose(probs["data"], predicted_real.loc[name].to_numpy(), atol=1e-6)


def test_onnx_runtime_engine_serves_the_same_model(clf_dir, predictor, tmp_path):
    """A compiled backend behind the same server: the ONNX Runtime engine `rv2 build-engines`
    builds, loaded as `rv2 serve --engines` loads it."""
    pytest.importorskip("onnxruntime")
    from rv2.engines.build import Sources, build_engines
    from rv2.engines.profile import load_profile
    from rv2.serve.cli import load_predictor
    from rv2.serve.server import ServerThread

    from .conftest import settings

    build_engines(load_profile("demo"), tmp_path / "eng", Sources(classifier=clf_dir),
                  backends=["onnxruntime"], echo=lambda s: None)
    ort_pred = load_predictor(str(clf_dir), str(tmp_path / "eng"), "cpu")
    x = np.random.default_rng(6).normal(size=(4, 3, SIZE, SIZE)).astype(np.float32)
    x[:, 1:] = x[:, :1]  # the engine reads one channel (grayscale radiographs)
    with ServerThread(ort_pred, settings(max_batch_size=4)) as s:
        h, g = clients(s)
        assert h.get_model_metadata("classifier")["platform"] == "rv2_engine:onnxruntime"
        for mod, c in ((th, h), (tg, g)):
            probs = c.infer("classifier", [tensor_input(mod, x)]).as_numpy("probabilities")
            np.testing.assert_allclose(probs, predictor.predict_tensor(x), atol=1e-5)


@pytest.mark.dali
def test_dali_decoding_equals_rv2_predict_with_dali(clf_dir, predictor, real_cxr):
    from rv2.classify import predict
    from rv2.serve.server import ServerThread

    from .conftest import settings

    files = [f for f in REAL_FILES if not f.endswith(".dcm")] + ["siim_sample.dcm"]  # DICOM: Python path
    df = pd.DataFrame({"image_id": files, "path": files})
    want = predict(clf_dir, df, root=real_cxr, device="cpu", batch_size=1, progress=False,
                   decoder="dali").set_index("image_id")[list(CHEXPERT_LABELS)]
    with ServerThread(predictor, settings(decoder="dali")) as s:
        _, g = clients(s)
        for name in files:
            r = g.infer("classifier", [bytes_input(tg, [(real_cxr / name).read_bytes()])])
            np.testing.assert_allclose(r.as_numpy("probabilities")[0], want.loc[name].to_numpy(),
                                       atol=1e-5, err_msg=name)
