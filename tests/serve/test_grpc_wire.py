"""ModelInfer's zero-copy request split against protobuf's own parse, malformed wire bytes,
and what tuning and instances show in the served model's config."""
from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from rv2.serve.grpc_service import DecodeError, split_infer_request, to_infer_request
from rv2.serve.server import ServerThread, keep_request_buffers
from tritonclient.grpc import service_pb2

from .conftest import SIZE, clients, settings, tensor_input


def _wire(raw_first: bool) -> bytes:
    r = service_pb2.ModelInferRequest(model_name="classifier", model_version="1", id="req-7")
    r.parameters["timeout"].int64_param = 5000
    r.inputs.add(name="image", datatype="FP32", shape=[2, 3])
    r.inputs.add(name="image_bytes", datatype="BYTES", shape=[1])
    r.outputs.add(name="probabilities").parameters["classification"].int64_param = 3
    raws = service_pb2.ModelInferRequest(raw_input_contents=[np.arange(6, dtype=np.float32).tobytes(),
                                                             b"\x00" * 300])
    if raw_first:  # protobuf takes top-level fields in any order: raw ones first on the wire
        return raws.SerializeToString() + r.SerializeToString()
    return r.SerializeToString() + raws.SerializeToString()


@pytest.mark.parametrize("raw_first", [False, True])
def test_split_equals_protobufs_parse_and_views_the_wire_bytes(raw_first):
    wire = _wire(raw_first)
    msg, raw = split_infer_request(wire)
    expected = service_pb2.ModelInferRequest.FromString(wire)
    assert [bytes(r) for r in raw] == list(expected.raw_input_contents)
    expected.ClearField("raw_input_contents")
    assert msg == expected
    assert all(r.obj is wire for r in raw)  # views of the received bytes, not copies
    req = to_infer_request(msg, None, raw)
    assert [(t.name, t.form, bytes(t.data)) for t in req.inputs] == [
        ("image", "raw", np.arange(6, dtype=np.float32).tobytes()), ("image_bytes", "raw", b"\x00" * 300)]
    assert req.timeout_us == 5000 and req.id == "req-7" and req.outputs[0].classification == 3


@pytest.mark.parametrize("wire", [
    b"\x3a\x10abc",          # raw_input_contents claims 16 bytes, 3 follow
    b"\x0a",                 # a key with no length
    b"\x08\xff\xff",         # truncated varint
    b"\x0f",                 # wire type 7 does not exist
])
def test_malformed_wire_bytes_are_refused(wire):
    with pytest.raises(DecodeError):
        split_infer_request(wire)


def test_garbage_modelinfer_bytes_over_grpc_fail_and_the_server_stays_up(predictor):
    import grpc

    x = np.random.default_rng(3).normal(size=(1, 3, SIZE, SIZE)).astype(np.float32)
    with ServerThread(predictor, settings(max_batch_size=4)) as s:
        ch = grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}")
        call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                              request_serializer=lambda b: b, response_deserializer=lambda b: b)
        for garbage in (b"\x3a\x10abc", b"\x0a\x05\xff\xff\xff\xff\xff"):  # ours, then protobuf's
            with pytest.raises(grpc.RpcError) as err:
                call(garbage, timeout=30)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details().startswith("malformed ModelInferRequest: ")
        ch.close()
        _, g = clients(s)
        probs = g.infer("classifier", [tensor_input(tg, x)]).as_numpy("probabilities")
        np.testing.assert_allclose(probs, predictor.predict_tensor(x), atol=1e-6)


class _FixedCost:
    """A backend whose call costs the same at any batch size (as a GPU's, below its limit)."""

    name = "fixed-cost"
    max_batch_size = None

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.calls = 0

    def logits(self, x):
        import time

        self.calls += 1
        time.sleep(self.seconds)
        return np.zeros((len(x), 14), np.float32)


def test_tuned_batch_size_and_instances_show_in_the_model_config(clf_dir):
    from rv2.classify.predictor import Predictor

    pred = Predictor.load(clf_dir, backend=_FixedCost(0.003))
    with ServerThread(pred, settings(max_batch_size=8, tune_batch_size=True, instances=2)) as s:
        assert s.service.preferred_batch_size == (8,)  # fixed cost per call: the largest batch wins
        assert sorted(s.service.batch_timings) == [1, 2, 4, 8]
        cfg = clients(s)[1].get_model_config("classifier", as_json=True)["config"]
        assert cfg["dynamic_batching"]["preferred_batch_size"] == [8]
        assert cfg["instance_group"][0]["count"] == 2
        x = np.zeros((1, 3, SIZE, SIZE), np.float32)
        assert clients(s)[0].infer("classifier", [tensor_input(th, x)]).as_numpy("probabilities").shape == (1, 14)


def test_request_buffers_stay_in_the_heap_on_glibc():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert keep_request_buffers() is True
