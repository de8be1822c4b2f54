"""The server's life: listen, warm up (then ready), serve, drain on SIGTERM, exit 0.

    server = Server(predictor, ServeSettings(http_port=8000, grpc_port=8001))
    server.run()                      # blocks; SIGTERM / SIGINT drain and return

    with ServerThread(predictor, settings) as s:   # tests and benchmarks
        url = f"127.0.0.1:{s.http_port}"

Shutdown order: readiness goes false and new requests get 503; the listening
sockets close; every request already accepted (HTTP and gRPC) runs to its
answer; idle connections close; the batcher finishes its queue; the loop ends.
"""
from __future__ import annotations

import asyncio
import ctypes
import logging
import platform
import signal
import threading
import time

from rv2.errors import UserError
from rv2.serve.http import HttpServer
from rv2.serve.service import InferenceService, ServeSettings

log = logging.getLogger(__name__)


# glibc's mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_request_buffers() -> bool:
    """Let glibc reuse the heap for request-sized buffers (once per process).

    By default every block over 128 KB to 32 MB may get its own mmap, and freed heap
    tops go back to the kernel: each 600 KB tensor then costs about 150 fresh page
    faults, which on a shared CPU is most of a request's time in the server. Blocks up
    to 32 MB stay in the heap instead, which then keeps its high-water mark (bounded by
    the queue and body limits). False where the C library is not glibc."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
                    and libc.mallopt(_M_TRIM_THRESHOLD, 256 << 20))
    except (OSError, AttributeError):
        return False


class Server:
    def __init__(self, predictor, settings: ServeSettings | None = None):
        self.settings = settings or ServeSettings()
        self.service = InferenceService(predictor, self.settings)
        self.http: HttpServer | None = None
        self.grpc = None
        self.http_port: int | None = None
        self.grpc_port: int | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started = threading.Event()
        self.error: BaseException | None = None

    async def start(self) -> None:
        s = self.settings
        keep_request_buffers()
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if s.http_port >= 0:
            self.http = HttpServer(self.service)
            try:
                self.http_port = await self.http.start(s.host, s.http_port)
            except OSError as exc:
                raise UserError(f"cannot listen on {s.host}:{s.http_port} for HTTP: "
                                f"{exc.strerror or exc} (choose --http-port)") from None
        if s.grpc_port >= 0:
            from rv2.serve.grpc_service import (
                start_grpc,  # grpc is heavy: only when serving it
            )

            self.grpc, self.grpc_port = await start_grpc(self.service, s.host, s.grpc_port)
        # live from here; ready once warm
        await self._loop.run_in_executor(None, self.service.start)
        log.info("model %r ready", s.model_name)

    async def shutdown(self) -> None:
        svc = self.service
        svc.draining = True
        grace = self.settings.shutdown_grace_s
        if self.http is not None:
            self.http.stop_accepting()
        waits = []
        if self.grpc is not None:
            waits.append(self.grpc.stop(grace))
        if self.http is not None:
            waits.append(self.http.drain(grace))
        await asyncio.gather(*waits)
        await self._loop.run_in_executor(None, svc.close)

    def request_stop(self) -> None:
        """Thread-safe: begin the graceful shutdown."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    async def main(self, install_signals: bool = False, on_ready=None) -> None:
        try:
            await self.start()
        except BaseException as exc:
            self.error = exc
            self.started.set()
            await self._cleanup_failed_start()
            raise
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._stop.set)
        self.started.set()
        if on_ready is not None:
            on_ready(self)
        await self._stop.wait()
        await self.shutdown()

    async def _cleanup_failed_start(self):
        if self.http is not None:
            self.http.stop_accepting()
        if self.grpc is not None:
            await self.grpc.stop(0)
        self.service.close()

    def run(self, on_ready=None) -> None:
        """Serve until SIGTERM or SIGINT, then drain and return."""
        asyncio.run(self.main(install_signals=True, on_ready=on_ready))

    def summary(self) -> str:
        m = self.service.metrics
        fails = sum(m.failure.values())
        return (f"{m.success} requests answered, {fails} refused or failed; {m.inference_count} "
                f"inferences in {m.exec_count} executions")


class ServerThread:
    """A Server on its own event-loop thread; `with` starts it (ready) and drains it."""

    def __init__(self, predictor, settings: ServeSettings | None = None, timeout: float = 120.0):
        self.server = Server(predictor, settings)
        self.timeout = timeout
        self._thread = threading.Thread(target=self._run, name="rv2-serve", daemon=True)

    def _run(self):
        try:
            asyncio.run(self.server.main())
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            self.server.error = self.server.error or exc

    def start(self) -> ServerThread:
        self._thread.start()
        if not self.server.started.wait(self.timeout):
            raise TimeoutError("server did not start in time")
        if self.server.error is not None:
            raise self.server.error
        return self

    def stop(self, timeout: float | None = None) -> None:
        self.server.request_stop()
        self._thread.join(timeout or self.timeout)

    @property
    def http_port(self):
        return self.server.http_port

    @property
    def grpc_port(self):
        return self.server.grpc_port

    @property
    def service(self):
        return self.server.service

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def wait_until(pred, timeout: float = 10.0, step: float = 0.01) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


__all__ = ["ServeSettings", "Server", "ServerThread", "keep_request_buffers"]
