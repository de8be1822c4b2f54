"""`GRPCInferenceService` (KServe v2 / Triton gRPC) on grpc.aio.

The message and service definitions are the generated ones tritonclient ships
(`tritonclient.grpc.service_pb2[_grpc]`, `model_config_pb2`), so the wire format
is Triton's own. Tensors travel in `raw_input_contents` / `raw_output_contents`
(tritonclient's default) or in the typed `contents` fields.

ModelInfer requests are not parsed whole by protobuf: `split_infer_request` walks
the message's top-level fields, keeps each raw input as a view of the received
bytes, and hands only the small rest to protobuf. Protobuf would copy a 600 KB
tensor twice (into its message, then out into a new bytes object when read).

Message size is bounded by grpc itself (`max_receive_message_length` =
`--max-body-bytes`: RESOURCE_EXHAUSTED before the handler runs); concurrent
RPCs beyond the admission limit get UNAVAILABLE.
"""
from __future__ import annotations

import logging

import grpc
from google.protobuf import json_format, message
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from rv2.errors import UserError
from rv2.serve.protocol import (
    TYPED_CONTENTS,
    VERSION,
    InferRequest,
    InputTensor,
    OutputRequest,
    RequestError,
)
from rv2.serve.service import InferenceService

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
RAW_INPUT_FIELD = service_pb2.ModelInferRequest.DESCRIPTOR.fields_by_name["raw_input_contents"].number


class DecodeError(ValueError):
    """A ModelInferRequest whose wire bytes are malformed."""


def _varint(buf, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise DecodeError("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def split_infer_request(data: bytes):
    """(ModelInferRequest without its raw inputs, the raw inputs as memoryviews of `data`).

    The same message protobuf would parse, field for field: top-level fields may come
    in any order and repeated fields keep theirs."""
    mv = memoryview(data)
    n, pos = len(mv), 0
    rest, raw = [], []
    while pos < n:
        start = pos
        key, pos = _varint(data, pos)
        wire = key & 7
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, pos = _varint(data, pos)
            if key >> 3 == RAW_INPUT_FIELD:
                if pos + size > n:
                    raise DecodeError("raw_input_contents runs past the message")
                raw.append(mv[pos:pos + size])
                pos += size
                continue
            pos += size
        else:
            raise DecodeError(f"unsupported wire type {wire}")
        if pos > n:
            raise DecodeError("field runs past the message")
        rest.append(mv[start:pos])
    return service_pb2.ModelInferRequest.FromString(b"".join(rest)), raw


def _param(params, key):
    if key not in params:
        return None
    p = params[key]
    which = p.WhichOneof("parameter_choice")
    return getattr(p, which) if which else None


def to_infer_request(request, time_remaining: float | None = None, raw=None) -> InferRequest:
    """`raw`: the raw inputs when split off the message (`split_infer_request`)."""
    if raw is None:
        raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise RequestError(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    inputs = []
    for i, t in enumerate(request.inputs):
        shape = tuple(int(d) for d in t.shape)
        if raw:
            inputs.append(InputTensor(t.name, t.datatype, shape, raw[i], "raw"))
            continue
        field = TYPED_CONTENTS.get(t.datatype)
        if field is None:
            raise RequestError(f"input '{t.name}': datatype {t.datatype} cannot travel in "
                               "typed contents; send raw_input_contents")
        data = list(getattr(t.contents, field))
        inputs.append(InputTensor(t.name, t.datatype, shape, data,
                                  "elements" if t.datatype == "BYTES" else "json"))
    outputs = None
    if request.outputs:
        outputs = []
        for o in request.outputs:
            k = _param(o.parameters, "classification")
            outputs.append(OutputRequest(o.name, int(k or 0)))
    timeout = _param(request.parameters, "timeout")
    timeout_us = int(timeout) if timeout else None
    if time_remaining is not None:  # the client's gRPC deadline
        t = max(1, int(time_remaining * 1e6))
        timeout_us = t if timeout_us is None else min(timeout_us, t)
    return InferRequest(inputs, outputs, request.id, timeout_us, True)


class GrpcService(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: InferenceService):
        self.service = service

    async def _abort(self, context, exc: RequestError):
        if exc.retry_after is not None:
            context.set_trailing_metadata((("retry-after", str(exc.retry_after)),))
        await context.abort(getattr(grpc.StatusCode, exc.grpc_code), str(exc))

    async def _auth(self, context):
        if not self.service.token_required:
            return
        md = dict(context.invocation_metadata() or ())
        if not self.service.authorized(md.get("authorization")):
            await self._abort(context, RequestError(
                "missing or wrong bearer token (metadata authorization: Bearer <token>)", 401))

    async def _target(self, context, name, version):
        try:
            self.service.model.check_target(name, version)
        except RequestError as exc:
            await self._abort(context, exc)

    # ------------------------------------------------------------------ health
    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=self.service.is_ready())

    async def ModelReady(self, request, context):
        await self._auth(context)
        await self._target(context, request.name, request.version)
        return service_pb2.ModelReadyResponse(ready=self.service.is_ready())

    # ------------------------------------------------------------------ metadata
    async def ServerMetadata(self, request, context):
        await self._auth(context)
        m = self.service.server_metadata()
        return service_pb2.ServerMetadataResponse(name=m["name"], version=m["version"],
                                                  extensions=m["extensions"])

    async def ModelMetadata(self, request, context):
        await self._auth(context)
        await self._target(context, request.name, request.version)
        m = self.service.model.metadata()
        T = service_pb2.ModelMetadataResponse.TensorMetadata
        return service_pb2.ModelMetadataResponse(
            name=m["name"], versions=m["versions"], platform=m["platform"],
            inputs=[T(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in m["inputs"]],
            outputs=[T(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in m["outputs"]])

    async def ModelConfig(self, request, context):
        await self._auth(context)
        await self._target(context, request.name, request.version)
        cfg = json_format.ParseDict(self.service.model_config(), model_config_pb2.ModelConfig())
        return service_pb2.ModelConfigResponse(config=cfg)

    # ------------------------------------------------------------------ inference
    async def _infer(self, request, context, raw=None) -> service_pb2.ModelInferResponse:
        svc = self.service
        svc.model.check_target(request.model_name, request.model_version)
        svc.admit()
        try:
            req = to_infer_request(request, context.time_remaining(), raw)
            outs = await svc.infer(req)
        finally:
            svc.release()
        resp = service_pb2.ModelInferResponse(model_name=svc.model.name, model_version=VERSION,
                                              id=request.id)
        for t in outs:
            resp.outputs.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
            resp.raw_output_contents.append(t.raw())
        return resp

    async def ModelInfer(self, split, context):
        request, raw = split  # split_infer_request
        await self._auth(context)
        if request is None:
            await self._abort(context, raw)
        try:
            return await self._infer(request, context, raw)
        except RequestError as exc:
            await self._abort(context, exc)
        except Exception as exc:
            log.exception("infer failed")
            await self._abort(context, RequestError(f"internal error: {type(exc).__name__}: {exc}", 500))

    async def ModelStreamInfer(self, request_iterator, context):
        await self._auth(context)
        async for request in request_iterator:
            try:
                resp = await self._infer(request, context)
                yield service_pb2.ModelStreamInferResponse(infer_response=resp)
            except RequestError as exc:
                yield service_pb2.ModelStreamInferResponse(error_message=str(exc))


def _split_or_error(data: bytes):
    """The registered deserializer: malformed bytes become a 400 in the handler (grpc would
    answer UNKNOWN and log a traceback for an exception raised here)."""
    try:
        return split_infer_request(data)
    except (DecodeError, message.DecodeError) as exc:
        return None, RequestError(f"malformed ModelInferRequest: {exc}")


class _Handlers:
    """Catches the method handlers the generated registration builds."""

    def add_generic_rpc_handlers(self, handlers):
        pass

    def add_registered_method_handlers(self, service, handlers):
        self.handlers = handlers


def add_to_server(servicer: GrpcService, server) -> None:
    """The generated registration, with ModelInfer's request split by `split_infer_request`."""
    caught = _Handlers()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, caught)
    handlers = dict(caught.handlers)
    handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(
        servicer.ModelInfer, request_deserializer=_split_or_error,
        response_serializer=service_pb2.ModelInferResponse.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


async def start_grpc(service: InferenceService, host: str, port: int):
    """A started grpc.aio server and the port it listens on."""
    limit = service.settings.max_body_bytes
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.so_reuseport", 0),
    ])
    add_to_server(GrpcService(service), server)
    addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    bound = server.add_insecure_port(addr)
    if bound == 0:
        raise UserError(f"cannot bind gRPC to {addr} (port in use?): choose --grpc-port")
    await server.start()
    return server, bound


__all__ = ["GrpcService", "add_to_server", "split_infer_request", "start_grpc", "to_infer_request"]
