"""A lean HTTP/1.1 front end on asyncio for the Open Inference Protocol.

Why not a web framework: at batch 1 the model takes milliseconds, and a
framework's routing, validation and ASGI layers add about as much again
(docs/serving.md has the figures). This server parses the request line and
headers itself, reads the body once into a buffer of the announced size and
hands binary tensors to numpy without a copy.

Routes (KServe v2; `{model}` may be followed by `/versions/{v}`):

    GET  /v2/health/live  /v2/health/ready           (never need the token)
    GET  /v2  /v2/models/{model}  /v2/models/{model}/ready  /v2/models/{model}/config
    POST /v2/models/{model}/infer                     JSON, or JSON + binary tensors
    GET  /metrics                                     Prometheus text

Limits are checked from the headers, before the body is read: the bearer token
(401), the body size (413, also for `Expect: 100-continue` clients, which then
never send it), and admission (503 + Retry-After). A request without a
Content-Length (chunked uploads) gets 411. gzip/deflate request bodies
(tritonclient's compression) are inflated up to the same size limit.
"""
from __future__ import annotations

import asyncio
import json
import logging
import zlib
from urllib.parse import unquote

from rv2.serve.protocol import (
    VERSION,
    InferRequest,
    InputTensor,
    OutputRequest,
    RequestError,
)
from rv2.serve.service import InferenceService

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024
REASONS = {100: "Continue", 200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required", 413: "Payload Too Large",
           431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable"}


def _error_body(msg: str) -> bytes:
    return json.dumps({"error": msg}).encode()


class _Head:
    __slots__ = ("headers", "keep_alive", "length", "method", "path", "query")

    def __init__(self, method, path, query, headers, keep_alive, length):
        self.method, self.path, self.query, self.headers = method, path, query, headers
        self.keep_alive, self.length = keep_alive, length


def _parse_head(raw: bytes) -> _Head:
    try:
        text = raw.decode("latin-1")
        line, *lines = text.split("\r\n")
        method, target, version = line.split(" ")
    except ValueError:
        raise RequestError("malformed HTTP request line") from None
    if not version.startswith("HTTP/1."):
        raise RequestError(f"unsupported protocol {version!r}")
    headers = {}
    for h in lines:
        k, sep, v = h.partition(":")
        if not sep:
            raise RequestError(f"malformed HTTP header line {h[:40]!r}")
        headers[k.strip().lower()] = v.strip()
    conn = headers.get("connection", "").lower()
    keep_alive = ("close" not in conn) if version == "HTTP/1.1" else ("keep-alive" in conn)
    path, _, query = target.partition("?")
    if "transfer-encoding" in headers:
        raise RequestError("chunked request bodies are not accepted: send a Content-Length", 411)
    try:
        length = int(headers.get("content-length", "0"))
        if length < 0:
            raise ValueError
    except ValueError:
        raise RequestError(f"bad Content-Length {headers.get('content-length')!r}") from None
    return _Head(method, unquote(path), query, headers, keep_alive, length)


def _route(path: str):
    """(kind, model, version) for a KServe v2 path; RequestError 404 for any other."""
    parts = [p for p in path.split("/") if p]
    if parts == ["metrics"]:
        return "metrics", None, None
    if not parts or parts[0] != "v2":
        raise RequestError(f"not found: {path}", 404)
    rest = parts[1:]
    if not rest:
        return "server_metadata", None, None
    if rest[0] == "health" and len(rest) == 2 and rest[1] in ("live", "ready"):
        return rest[1], None, None
    if rest[0] == "models" and len(rest) >= 2:
        model, rest = rest[1], rest[2:]
        version = None
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
        if not rest:
            return "model_metadata", model, version
        if len(rest) == 1 and rest[0] in ("ready", "config", "infer"):
            return "model_" + rest[0], model, version
    raise RequestError(f"not found: {path}", 404)


def _inflate(body, encoding: str, limit: int) -> bytes:
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding)
    if wbits is None:
        raise RequestError(f"unsupported Content-Encoding {encoding!r} (gzip, deflate or none)")
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise RequestError(f"corrupt {encoding} body: {exc}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise RequestError(f"inflated body exceeds the limit of {limit} bytes", 413)
    return out


def parse_infer_body(body, headers: dict) -> InferRequest:
    """KServe v2 JSON (+ binary tensor data) -> InferRequest (RequestError 400 if malformed)."""
    mv = memoryview(body)
    hlen = headers.get("inference-header-content-length")
    if hlen is not None:
        try:
            hlen = int(hlen)
            if not 0 <= hlen <= len(mv):
                raise ValueError
        except ValueError:
            raise RequestError(f"Inference-Header-Content-Length {headers['inference-header-content-length']!r} "
                               f"is not within the body's {len(mv)} bytes") from None
    else:
        hlen = len(mv)
    try:
        obj = json.loads(bytes(mv[:hlen]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"malformed JSON in the request body: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("inputs"), list):
        raise RequestError("request JSON must be an object with an 'inputs' list")
    binary, offset = mv[hlen:], 0
    inputs = []
    for i, t in enumerate(obj["inputs"]):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str) \
                or not isinstance(t.get("datatype"), str) or not isinstance(t.get("shape"), list):
            raise RequestError(f"input {i}: needs 'name', 'datatype' and 'shape'")
        params = t.get("parameters") or {}
        if not isinstance(params, dict):
            raise RequestError(f"input '{t['name']}': parameters must be an object")
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise RequestError(f"input '{t['name']}': binary_data_size {size!r} runs past the "
                                   f"{len(binary)} bytes of binary data")
            data, form = binary[offset:offset + size], "raw"
            offset += size
        elif "data" in t:
            data, form = t["data"], "json"
        else:
            raise RequestError(f"input '{t['name']}': no 'data' and no binary_data_size")
        inputs.append(InputTensor(t["name"], t["datatype"], tuple(t["shape"]), data, form))
    if offset != len(binary):
        raise RequestError(f"{len(binary) - offset} bytes of binary data not claimed by any input")
    params = obj.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestError("request parameters must be an object")
    outputs = None
    if obj.get("outputs") is not None:
        if not isinstance(obj["outputs"], list):
            raise RequestError("'outputs' must be a list")
        outputs = []
        for o in obj["outputs"]:
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise RequestError("each requested output needs a 'name'")
            op = o.get("parameters") or {}
            binary_flag = op.get("binary_data")
            outputs.append(OutputRequest(o["name"], op.get("classification", 0) or 0,
                                         None if binary_flag is None else bool(binary_flag)))
    timeout = params.get("timeout")
    if timeout is not None and (not isinstance(timeout, int) or timeout < 0):
        raise RequestError(f"parameter timeout must be microseconds (a non-negative integer), got {timeout!r}")
    rid = obj.get("id", "")
    return InferRequest(inputs, outputs, str(rid) if rid is not None else "", timeout or None,
                        bool(params.get("binary_data_output", False)), params)


class HttpServer:
    def __init__(self, service: InferenceService):
        self.service = service
        self.conns: set[_Conn] = set()
        self._server: asyncio.base_events.Server | None = None
        self.port: int | None = None

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Conn(self), host, port, backlog=512)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()
        for c in list(self.conns):
            c.shutdown()

    async def drain(self, grace: float) -> bool:
        """Wait until every connection has finished its request and closed."""
        loop = asyncio.get_running_loop()
        end = loop.time() + grace
        while self.conns and loop.time() < end:
            await asyncio.sleep(0.01)
        left = list(self.conns)
        for c in left:
            c.transport.close()
        return not left

    # ------------------------------------------------------------------ handlers
    def handle_simple(self, kind: str, model, version) -> tuple[int, bytes, str]:
        svc = self.service
        if kind == "live":
            return 200, b"", "text/plain"
        if kind == "ready":
            return (200, b"", "text/plain") if svc.is_ready() else (503, _error_body("not ready"), "application/json")
        if kind == "metrics":
            return 200, svc.metrics.render().encode(), "text/plain; version=0.0.4"
        if kind == "server_metadata":
            return 200, json.dumps(svc.server_metadata()).encode(), "application/json"
        svc.model.check_target(model, version)
        if kind == "model_ready":
            ok = svc.is_ready()
            return (200, b"", "text/plain") if ok else (503, _error_body("model not ready"), "application/json")
        if kind == "model_metadata":
            return 200, json.dumps(svc.model.metadata()).encode(), "application/json"
        if kind == "model_config":
            return 200, json.dumps(svc.model_config()).encode(), "application/json"
        raise RequestError("not found", 404)

    async def infer(self, head: _Head, body, version) -> tuple[int, list, dict]:
        enc = head.headers.get("content-encoding", "identity").lower()
        if enc not in ("identity", ""):
            body = _inflate(body, enc, self.service.settings.max_body_bytes)
        req = parse_infer_body(body, head.headers)
        outs = await self.service.infer(req)
        wanted = {o.name: o for o in req.outputs or []}
        entries, blobs = [], []
        for t in outs:
            o = wanted.get(t.name)
            binary = req.binary_output if o is None or o.binary is None else o.binary
            e = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
            if binary:
                raw = t.raw()
                e["parameters"] = {"binary_data_size": len(raw)}
                blobs.append(raw)
            else:
                e["data"] = t.json_data()
            entries.append(e)
        resp = {"model_name": self.service.model.name, "model_version": VERSION, "outputs": entries}
        if req.id:
            resp["id"] = req.id
        head_bytes = json.dumps(resp).encode()
        extra = {}
        if blobs:
            extra["Inference-Header-Content-Length"] = str(len(head_bytes))
            return 200, [head_bytes, *blobs], {"Content-Type": "application/octet-stream", **extra}
        return 200, [head_bytes], {"Content-Type": "application/json"}


class _Conn(asyncio.Protocol):
    """One client connection: requests one at a time (reading pauses while one runs)."""

    def __init__(self, server: HttpServer):
        self.srv = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.head: _Head | None = None
        self.body: memoryview | None = None
        self.got = 0
        self.busy = False
        self.closing = False   # close after the current response
        self.admitted = False
        self.task: asyncio.Task | None = None
        self.last = 0.0
        self._timer = None
        self._version = None
        self._body_timer = None  # the body must arrive within the request timeout
        self.buffer: bytearray | None = None
        self.pad = 0
        self.skip = 0           # bytes of a refused request's body still to drop
        self.lingering = False  # refused without reading: drop input until the client stops

    # ------------------------------------------------------------ asyncio
    def connection_made(self, transport):
        self.transport = transport
        self.srv.conns.add(self)
        loop = asyncio.get_running_loop()
        self.last = loop.time()
        self._timer = loop.call_later(self.srv.service.settings.keepalive_s, self._idle)

    def connection_lost(self, exc):
        self.srv.conns.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        if self._body_timer is not None:
            self._body_timer.cancel()
        if self.task is not None and not self.task.done():
            self.task.cancel()  # the client left: its queued work is dropped
        elif self.admitted:
            self._release()

    def data_received(self, data: bytes):
        self.last = asyncio.get_running_loop().time()
        if self.lingering:
            return
        if self.skip:
            n = min(self.skip, len(data))
            self.skip -= n
            data = data[n:]
            if not data:
                return
        if self.body is not None:
            n = min(len(data), len(self.body) - self.got)
            self.body[self.got:self.got + n] = memoryview(data)[:n]
            self.got += n
            if n < len(data):
                self.buf += data[n:]
            if self.got == len(self.body):
                self._dispatch()
            return
        self.buf += data
        self._next()

    # ------------------------------------------------------------ requests
    def shutdown(self) -> None:
        """Server draining: finish what is in progress, close when idle."""
        self.closing = True
        if not self.busy and self.body is None and not self.buf:
            self.transport.close()

    def _idle(self):
        loop = asyncio.get_running_loop()
        keep = self.srv.service.settings.keepalive_s
        if self.lingering:
            keep = 1.0  # close once the refused client has stopped sending for a second
        if self.busy or loop.time() - self.last < keep:
            self._timer = loop.call_later(max(0.05, keep - (loop.time() - self.last)), self._idle)
        else:
            self.transport.close()  # idle, or a request trickling in too slowly

    def _next(self):
        while not self.busy and self.body is None and not self.transport.is_closing():
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self._fail(RequestError("request headers too large", 431), close=True)
                return
            raw = bytes(self.buf[:end])
            del self.buf[:end + 4]
            if not raw:
                continue  # stray CRLF between requests
            try:
                head = _parse_head(raw)
            except RequestError as exc:
                self.head = None
                self._fail(exc, close=True)
                return
            self.head = head
            try:
                kind, model, version = self._precheck(head)
            except RequestError as exc:
                self._refuse(exc, head)
                if self.transport.is_closing() or self.lingering:
                    return
                continue
            if kind != "model_infer":
                self._simple(kind, model, version, head)
                continue
            if head.headers.get("expect", "").lower() == "100-continue":
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            # binary tensors start after the JSON header: pad in front so they land on a
            # 64-byte boundary (numpy and the backends then read them aligned, no copy)
            try:
                hlen = int(head.headers.get("inference-header-content-length", 0))
            except ValueError:
                hlen = 0
            self.pad = (-hlen) % 64
            self.buffer = bytearray(self.pad + head.length)
            self.body = memoryview(self.buffer)[self.pad:]
            self._body_timer = asyncio.get_running_loop().call_later(
                self.srv.service.settings.request_timeout_s, self._body_too_slow)
            n = min(len(self.buf), head.length)
            self.body[:n] = self.buf[:n]
            del self.buf[:n]
            self.got = n
            self._version = version
            if self.got == head.length:
                self._dispatch()
            return

    def _precheck(self, head: _Head):
        """Route, auth, size and admission, from the headers alone."""
        svc = self.srv.service
        kind, model, version = _route(head.path)
        if kind not in ("live", "ready") and not svc.authorized(head.headers.get("authorization")):
            raise RequestError("missing or wrong bearer token (Authorization: Bearer <token>)", 401)
        if kind == "model_infer":
            if head.method != "POST":
                raise RequestError(f"{head.method} not allowed on {head.path}: use POST", 405)
            svc.model.check_target(model, version)
            limit = svc.settings.max_body_bytes
            if head.length > limit:
                raise RequestError(f"request body of {head.length} bytes exceeds the limit of "
                                   f"{limit} bytes (--max-body-bytes)", 413)
            if head.length == 0:
                raise RequestError("empty request body: send the inference request JSON")
            svc.admit()
            self.admitted = True
        elif head.method not in ("GET", "HEAD"):
            raise RequestError(f"{head.method} not allowed on {head.path}: use GET", 405)
        return kind, model, version

    def _refuse(self, exc: RequestError, head: _Head):
        """Answer from the headers alone. A body within the size limit is dropped as it
        arrives and the connection lives on; a larger one is not read: the answer goes
        out, our side closes, and input is dropped until the client stops sending (a
        client that sends its body before reading would otherwise see a reset)."""
        if head.length <= self.srv.service.settings.max_body_bytes:
            n = min(len(self.buf), head.length)
            del self.buf[:n]
            self.skip = head.length - n
            self._fail(exc, close=False)
            return
        self.buf.clear()
        self._fail(exc, close=False, keep_open=True)
        self.lingering = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        else:
            self.transport.close()

    def _simple(self, kind, model, version, head: _Head):
        try:
            status, body, ctype = self.srv.handle_simple(kind, model, version)
        except RequestError as exc:
            self._fail(exc, close=False)
            return
        self._respond(status, [body] if head.method != "HEAD" else [], {"Content-Type": ctype},
                      keep_alive=head.keep_alive, length=len(body))

    def _body_too_slow(self):
        """A body trickling in holds an admission slot: it gets the request timeout."""
        if self.body is not None and not self.transport.is_closing():
            self.body = self.buffer = None
            self._release()
            self._fail(RequestError("request body not received within the request timeout",
                                    408), close=True)

    def _dispatch(self):
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        body, self.body, self.buffer = self.body, None, None
        self.busy = True
        self.transport.pause_reading()
        self.task = asyncio.get_running_loop().create_task(self._run(self.head, body, self._version))

    async def _run(self, head: _Head, body, version):
        try:
            status, parts, headers = await self.srv.infer(head, body, version)
        except RequestError as exc:
            self._release()
            self._fail(exc, close=False)
        except asyncio.CancelledError:
            self._release()
            raise
        except Exception as exc:
            log.exception("infer failed")
            self._release()
            self._fail(RequestError(f"internal error: {type(exc).__name__}: {exc}", 500), close=False)
        else:
            self._release()
            self._respond(status, parts, headers, keep_alive=head.keep_alive)
        self.task = None
        self.busy = False
        if not self.transport.is_closing():
            self.transport.resume_reading()
            self._next()

    def _release(self):
        if self.admitted:
            self.admitted = False
            self.srv.service.release()

    # ------------------------------------------------------------ responses
    def _fail(self, exc: RequestError, *, close: bool, keep_open: bool = False):
        headers = {"Content-Type": "application/json"}
        if exc.retry_after is not None:
            headers["Retry-After"] = str(exc.retry_after)
        if exc.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        keep = (self.head.keep_alive if self.head is not None else False) and not close
        self._respond(exc.status, [_error_body(str(exc))], headers, keep_alive=keep or keep_open,
                      announce_close=keep_open)

    def _respond(self, status: int, parts: list, headers: dict, *, keep_alive: bool,
                 length: int | None = None, announce_close: bool = False):
        if self.transport.is_closing():
            return
        close = not keep_alive or self.closing
        n = sum(len(p) for p in parts) if length is None else length
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}", f"Content-Length: {n}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if close or announce_close:
            lines.append("Connection: close")
        self.transport.writelines([("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), *parts])
        if close:
            self.transport.close()


__all__ = ["HttpServer", "parse_infer_body"]
