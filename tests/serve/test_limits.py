"""Bad requests, limits and safety: one-line 4xx with Triton's codes, the server stays ready."""
from __future__ import annotations

import http.client
import io
import json
import socket
import struct
import threading
import zlib

import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from rv2.serve.metrics import parse_text
from rv2.serve.protocol import serialize_bytes
from rv2.serve.server import ServerThread, wait_until
from tritonclient.utils import InferenceServerException

from .conftest import (
    SIZE,
    bytes_input,
    clients,
    gated_predictor,
    settings,
    tensor_input,
)


def post(port, path, body: bytes, headers=None, timeout=60):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("POST", path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, (json.loads(data) if data else {}), dict(r.getheaders())


def binary_body(inputs, outputs=None):
    """KServe v2 JSON + binary data: [(name, dtype, shape, raw bytes)]."""
    js = {"inputs": [{"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(b)}}
                     for n, d, s, b in inputs]}
    if outputs:
        js["outputs"] = outputs
    head = json.dumps(js).encode()
    return head + b"".join(b for *_, b in inputs), {"Inference-Header-Content-Length": str(len(head))}


def x(n=1, c=3, s=SIZE, dtype="<f4"):
    return np.random.default_rng(0).normal(size=(n, c, s, s)).astype(dtype)


def png_with_size(w, h):
    """A real 1x1 PNG whose header claims w x h (a decompression bomb's signature)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", w, h)
    crc = zlib.crc32(bytes(data[ihdr:ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def dicom_without_pixels():
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.PatientID = "x"
    ds.Modality = "CR"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _cases(real_cxr):
    png = (real_cxr / "00000001_000.png").read_bytes()
    ok = x()
    one = lambda blob: binary_body([("image_bytes", "BYTES", [1], serialize_bytes([blob]))])
    J = lambda obj: (json.dumps(obj).encode(), {})
    return {
        # name: (path, (body, headers), status, words in the error)
        "wrong shape": ("classifier", binary_body([("image", "FP32", [1, 3, SIZE + 1, SIZE], x(1, 3, SIZE + 1).tobytes())]),
                        400, "shape"),
        "wrong dtype": ("classifier", binary_body([("image", "FP64", [1, 3, SIZE, SIZE], ok.astype("<f8").tobytes())]),
                        400, "datatype FP64"),
        "wrong input name": ("classifier", binary_body([("pixels", "FP32", list(ok.shape), ok.tobytes())]),
                             400, "unexpected inference input 'pixels'"),
        "batch over max": ("classifier", binary_body([("image", "FP32", [9, 3, SIZE, SIZE], x(9).tobytes())]),
                           400, "exceeds the maximum 8"),
        "data length != shape": ("classifier", binary_body([("image", "FP32", [2, 3, SIZE, SIZE], ok.tobytes())]),
                                 400, "needs"),
        "json values != shape": ("classifier", J({"inputs": [{"name": "image", "datatype": "FP32",
                                                              "shape": [1, 3, SIZE, SIZE], "data": [1.0, 2.0]}]}),
                                 400, "values"),
        "garbage JSON": ("classifier", (b"{not json", {}), 400, "malformed JSON"),
        "no inputs": ("classifier", J({"outputs": []}), 400, "'inputs'"),
        "two inputs": ("classifier", binary_body([("image", "FP32", list(ok.shape), ok.tobytes()),
                                                  ("image", "FP32", list(ok.shape), ok.tobytes())]),
                       400, "exactly one input"),
        "NaN in tensor": ("classifier", binary_body([("image", "FP32", list(ok.shape),
                                                      np.full_like(ok, np.nan).tobytes())]), 400, "NaN"),
        "unknown output": ("classifier", binary_body([("image", "FP32", list(ok.shape), ok.tobytes())],
                                                     outputs=[{"name": "logits"}]), 400, "output 'logits'"),
        "binary size overrun": ("classifier", (json.dumps({"inputs": [{"name": "image", "datatype": "FP32",
                                "shape": [1, 3, SIZE, SIZE], "parameters": {"binary_data_size": 10 ** 6}}]}).encode(),
                                {}), 400, "binary_data_size"),
        "bytes not an image": ("classifier", one(b"hello, not an image at all"), 400, "not a recognised image"),
        "truncated PNG": ("classifier", one(png[: len(png) // 2]), 400, "truncated"),
        "DICOM without pixels": ("classifier", one(dicom_without_pixels()), 400, "no pixel data"),
        "decompression bomb": ("classifier", one(png_with_size(20000, 20000)), 400, "decompression bomb"),
        "over the pixel limit": ("classifier", one(png_with_size(7000, 7000)), 400, "exceeds the limit of 36000000"),
        "bad BYTES framing": ("classifier", binary_body([("image_bytes", "BYTES", [2], serialize_bytes([png]))]),
                              400, "ends before element 1"),
        "bad base64": ("classifier", J({"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1],
                                                    "data": ["%%%not base64"]}]}), 400, "base64"),
        "unknown model": ("resnet", binary_body([("image", "FP32", list(ok.shape), ok.tobytes())]), 404, "unknown model"),
        "unknown version": ("classifier/versions/7", binary_body([("image", "FP32", list(ok.shape), ok.tobytes())]),
                            404, "unknown version"),
    }


def test_bad_request_table_http(server, real_cxr):
    for name, (model, (body, headers), status, words) in _cases(real_cxr).items():
        got, js, _ = post(server.http_port, f"/v2/models/{model}/infer", body, headers)
        assert got == status, (name, got, js)
        assert words in js["error"] and "\n" not in js["error"], (name, js)
    h, _ = clients(server)
    assert h.is_server_ready() and h.is_model_ready("classifier")
    r = h.infer("classifier", [tensor_input(th, x())])
    assert r.as_numpy("probabilities").shape == (1, 14)


def test_http_protocol_errors(server):
    port = server.http_port
    assert post(port, "/v2/nothing", b"{}")[0] == 404
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/v2/models/classifier/infer")
    assert c.getresponse().status == 405
    c.close()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:  # chunked upload
        s.sendall(b"POST /v2/models/classifier/infer HTTP/1.1\r\nHost: x\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 411")
    # gzip-compressed requests (tritonclient's request_compression_algorithm)
    r = clients(server)[0].infer("classifier", [tensor_input(th, x())], request_compression_algorithm="gzip")
    assert r.as_numpy("probabilities").shape == (1, 14)


def test_bad_request_table_grpc(server, real_cxr):
    _, g = clients(server)
    ok = x()

    def call(inputs, model="classifier", version="", outputs=None):
        with pytest.raises(InferenceServerException) as ei:
            g.infer(model, inputs, model_version=version, outputs=outputs)
        return ei.value.status(), ei.value.message()

    wrong_len = tensor_input(tg, ok)
    wrong_len.set_shape([2, 3, SIZE, SIZE])
    png = (real_cxr / "00000001_000.png").read_bytes()
    table = [
        (call([tensor_input(tg, x(1, 3, SIZE + 1))]), "INVALID_ARGUMENT", "shape"),
        (call([tensor_input(tg, ok.astype(np.float64), dtype="FP64")]), "INVALID_ARGUMENT", "FP64"),
        (call([tensor_input(tg, ok, name="pixels")]), "INVALID_ARGUMENT", "pixels"),
        (call([tensor_input(tg, x(9))]), "INVALID_ARGUMENT", "exceeds the maximum"),
        (call([wrong_len]), "INVALID_ARGUMENT", "needs"),
        (call([bytes_input(tg, [png[:5000]])]), "INVALID_ARGUMENT", "truncated"),
        (call([bytes_input(tg, [dicom_without_pixels()])]), "INVALID_ARGUMENT", "no pixel data"),
        (call([tensor_input(tg, ok)], model="resnet"), "NOT_FOUND", "unknown model"),
        (call([tensor_input(tg, ok)], version="3"), "NOT_FOUND", "unknown version"),
        (call([tensor_input(tg, ok)], outputs=[tg.InferRequestedOutput("logits")]), "INVALID_ARGUMENT", "logits"),
    ]
    for (status, msg), code, words in table:
        assert status == f"StatusCode.{code}" and words in msg, (status, msg, code, words)
    assert g.is_server_ready() and g.infer("classifier", [tensor_input(tg, ok)]).as_numpy("probabilities").shape == (1, 14)


def test_body_limit_413_before_the_body_is_read(predictor):
    with ServerThread(predictor, settings(max_body_bytes=50_000, max_batch_size=8)) as s:
        port = s.http_port
        # headers announcing a gigabyte and no body at all: the answer comes from the headers
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"POST /v2/models/classifier/infer HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: 1000000000\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 413")
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:  # curl's way
            sock.sendall(b"POST /v2/models/classifier/infer HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: 60000\r\nExpect: 100-continue\r\n\r\n")
            reply = sock.recv(4096)
            assert reply.startswith(b"HTTP/1.1 413") and b"100 Continue" not in reply
        h, g = clients(s)
        big = x(8)  # 98 KB
        with pytest.raises(InferenceServerException) as ei:  # the client sends it all anyway
            h.infer("classifier", [tensor_input(th, big)])
        assert ei.value.status() == "413" and "exceeds the limit of 50000" in ei.value.message()
        with pytest.raises(InferenceServerException) as ei:
            g.infer("classifier", [tensor_input(tg, big)])
        assert ei.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert h.is_server_ready()
        assert h.infer("classifier", [tensor_input(th, x(1))]).as_numpy("probabilities").shape == (1, 14)


def _infer_thread(port, data, results, i, **kw):
    c = th.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=120)
    try:
        results[i] = c.infer("classifier", [tensor_input(th, data)], **kw).as_numpy("probabilities")
    except InferenceServerException as exc:
        results[i] = exc


def _fill_queue(s, gp):
    """Three requests in: one held at the gate, then two queued behind it. The first is let
    in alone: three racing in could all reach the queue before the batcher's thread takes
    one, and the third would be refused as over the queue's size."""
    gp.backend.gate.clear()
    results = [None] * 3
    threads = [threading.Thread(target=_infer_thread, args=(s.http_port, x(1), results, i)) for i in range(3)]
    threads[0].start()
    assert wait_until(lambda: s.service.active == 1 and s.service.batcher.pending() == 0, 60), \
        f"first request not at the gate: active {s.service.active}, pending {s.service.batcher.pending()}"
    for t in threads[1:]:
        t.start()
    assert wait_until(lambda: s.service.active == 3 and s.service.batcher.pending() == 2, 60), \
        f"queue never held 2 requests: active {s.service.active}, pending {s.service.batcher.pending()}"
    return threads, results


def test_full_queue_503_retry_after_then_all_admitted_answered(predictor):
    gp = gated_predictor(predictor, max_batch_size=1)
    gp.backend.gate_timeout = 180  # held until the test opens it, however slow the machine
    # the queued requests' deadline outlasts the wait for the full queue, too
    with ServerThread(gp, settings(max_batch_size=1, max_queue_size=2, request_timeout_s=180)) as s:
        threads, results = _fill_queue(s, gp)
        m0 = parse_text(s.service.metrics.render())
        status, js, headers = post(s.http_port, "/v2/models/classifier/infer",
                                   *binary_body([("image", "FP32", [1, 3, SIZE, SIZE], x(1).tobytes())]))
        assert status == 503 and headers.get("Retry-After") == "1" and "retry later" in js["error"]
        with pytest.raises(InferenceServerException) as ei:
            clients(s)[1].infer("classifier", [tensor_input(tg, x(1))])
        assert ei.value.status() == "StatusCode.UNAVAILABLE"
        gp.backend.gate.set()
        for t in threads:
            t.join(120)
        assert all(isinstance(r, np.ndarray) and r.shape == (1, 14) for r in results), results
        m = parse_text(s.service.metrics.render())
        lab = 'model="classifier",version="1"'
        ok, rej = f"nv_inference_request_success{{{lab}}}", f'nv_inference_request_failure{{{lab},reason="REJECTED"}}'
        assert m[ok] - m0[ok] == 3 and m[rej] - m0[rej] == 2


def test_request_timeout_in_queue_is_503(predictor):
    gp = gated_predictor(predictor, max_batch_size=1)
    with ServerThread(gp, settings(max_batch_size=1)) as s:
        gp.backend.gate.clear()
        results = [None] * 2
        first = threading.Thread(target=_infer_thread, args=(s.http_port, x(1), results, 0))
        first.start()
        assert wait_until(lambda: s.service.active == 1 and s.service.batcher.pending() == 0, 60)
        second = threading.Thread(target=_infer_thread, args=(s.http_port, x(1), results, 1),
                                  kwargs={"timeout": 50_000})  # microseconds, Triton's parameter
        second.start()
        assert wait_until(lambda: s.service.batcher.pending() == 1, 60)
        threading.Event().wait(0.2)
        gp.backend.gate.set()
        first.join(60)
        second.join(60)
        assert isinstance(results[0], np.ndarray)
        assert isinstance(results[1], InferenceServerException) and results[1].status() == "503"
        assert "timed out" in results[1].message()
        assert gp.backend.calls == 2  # warm-up + the first request: the late one never ran


def test_grpc_deadline_drops_the_queued_request_and_counts_it_cancelled(predictor):
    gp = gated_predictor(predictor, max_batch_size=1)
    with ServerThread(gp, settings(max_batch_size=1)) as s:
        gp.backend.gate.clear()
        results = [None]
        first = threading.Thread(target=_infer_thread, args=(s.http_port, x(1), results, 0))
        first.start()
        assert wait_until(lambda: s.service.active == 1 and s.service.batcher.pending() == 0, 60)
        m0 = parse_text(s.service.metrics.render())
        errors = []

        def call():
            try:
                clients(s)[1].infer("classifier", [tensor_input(tg, x(1))], client_timeout=6.0)
            except InferenceServerException as exc:
                errors.append(exc)

        late = threading.Thread(target=call)
        late.start()
        assert wait_until(lambda: s.service.batcher.pending() == 1, 6)  # queued behind the gate
        late.join(60)
        assert len(errors) == 1 and errors[0].status() == "StatusCode.DEADLINE_EXCEEDED"
        lab = 'model="classifier",version="1"'
        cancelled = f'nv_inference_request_failure{{{lab},reason="CANCELED"}}'
        assert wait_until(lambda: parse_text(s.service.metrics.render())[cancelled] - m0[cancelled] == 1, 30)
        assert wait_until(lambda: s.service.active == 1, 30)  # its admission is released
        gp.backend.gate.set()
        first.join(60)
        assert isinstance(results[0], np.ndarray)
        assert gp.backend.calls == 2  # warm-up + the first request: the dropped one never ran
        # and the server goes on answering over gRPC
        out = clients(s)[1].infer("classifier", [tensor_input(tg, x(1))]).as_numpy("probabilities")
        np.testing.assert_allclose(out, predictor.predict_tensor(x(1)), atol=1e-5)


def test_dynamic_batching_gathers_queued_requests(predictor):
    gp = gated_predictor(predictor, max_batch_size=8)
    with ServerThread(gp, settings(max_batch_size=8, max_queue_delay_microseconds=0)) as s:
        gp.backend.gate.clear()
        rows = [x(1) + i for i in range(7)]
        results = [None] * 7
        threads = [threading.Thread(target=_infer_thread, args=(s.http_port, rows[i], results, i)) for i in range(7)]
        threads[0].start()
        assert wait_until(lambda: s.service.active == 1 and s.service.batcher.pending() == 0, 60)
        for t in threads[1:]:
            t.start()
        assert wait_until(lambda: s.service.batcher.pending() == 6, 60)
        gp.backend.gate.set()
        for t in threads:
            t.join(120)
        for i in range(7):  # each request gets its own rows back
            np.testing.assert_allclose(results[i], predictor.predict_tensor(rows[i]), atol=1e-5)
        m = parse_text(s.service.metrics.render())
        lab = 'model="classifier",version="1"'
        assert m[f"nv_inference_count{{{lab}}}"] == 7 and m[f"nv_inference_exec_count{{{lab}}}"] == 2


def test_bearer_token(predictor):
    with ServerThread(predictor, settings(token="s3cret")) as s:
        h, g = clients(s)
        assert h.is_server_live() and h.is_server_ready() and g.is_server_ready()  # probes: no token
        with pytest.raises(InferenceServerException) as ei:
            h.get_model_metadata("classifier")
        assert ei.value.status() == "401"
        with pytest.raises(InferenceServerException) as ei:
            h.infer("classifier", [tensor_input(th, x())], headers={"Authorization": "Bearer wrong"})
        assert ei.value.status() == "401"
        with pytest.raises(InferenceServerException) as ei:
            g.infer("classifier", [tensor_input(tg, x())])
        assert ei.value.status() == "StatusCode.UNAUTHENTICATED"
        auth = {"Authorization": "Bearer s3cret"}
        assert h.infer("classifier", [tensor_input(th, x())], headers=auth).as_numpy("probabilities").shape == (1, 14)
        assert g.infer("classifier", [tensor_input(tg, x())], headers={"authorization": "Bearer s3cret"}) \
            .as_numpy("probabilities").shape == (1, 14)


def test_metrics_named_like_triton(server):
    """Counted per request that reaches the model: a success, and a bad request of its
    own (the wrong input name: reason OTHER) so the figures do not hang on other tests.
    Garbage JSON fails before the model is known, as in Triton, and is not counted."""
    h, _ = clients(server)
    h.infer("classifier", [tensor_input(th, x(2))])

    def failures():
        c = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
        c.request("GET", "/metrics")
        m = parse_text(c.getresponse().read().decode())
        return m['nv_inference_request_failure{model="classifier",version="1",reason="OTHER"}']

    before = failures()
    post(server.http_port, "/v2/models/classifier/infer", b"{garbage")
    assert failures() == before
    ok_x = x()
    post(server.http_port, "/v2/models/classifier/infer",
         *binary_body([("pixels", "FP32", list(ok_x.shape), ok_x.tobytes())]))
    assert failures() == before + 1
    c = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    c.request("GET", "/metrics")
    r = c.getresponse()
    text = r.read().decode()
    assert r.status == 200 and r.getheader("Content-Type").startswith("text/plain")
    m = parse_text(text)
    lab = 'model="classifier",version="1"'
    ok = m[f"nv_inference_request_success{{{lab}}}"]
    assert ok >= 1 and m[f'nv_inference_request_failure{{{lab},reason="OTHER"}}'] >= 1
    assert m[f"nv_inference_count{{{lab}}}"] >= m[f"nv_inference_exec_count{{{lab}}}"] >= 1
    for name in ("queue_duration", "compute_infer_duration"):
        assert m[f"nv_inference_{name}_histogram_us_count{{{lab}}}"] == ok
        assert m[f'nv_inference_{name}_histogram_us_bucket{{{lab},le="+Inf"}}'] == ok
        assert f"# TYPE nv_inference_{name}_us counter" in text
    assert m[f"nv_inference_compute_infer_duration_us{{{lab}}}"] > 0


def test_slow_body_gets_408_and_frees_its_slot(predictor):
    with ServerThread(predictor, settings(request_timeout_s=0.5)) as s:
        with socket.create_connection(("127.0.0.1", s.http_port), timeout=30) as sock:
            sock.sendall(b"POST /v2/models/classifier/infer HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: 1000\r\n\r\n{\"inputs\"")
            assert wait_until(lambda: s.service.active == 1, 10)
            assert sock.recv(4096).startswith(b"HTTP/1.1 408")
        assert wait_until(lambda: s.service.active == 0, 10)
        assert clients(s)[0].is_server_ready()
