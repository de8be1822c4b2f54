"""Stopping a long run cleanly on SIGINT (Ctrl-C) or SIGTERM (kill, a scheduler's
preemption).

    with StopRequests() as stop:
        for batch in batches:
            run(batch)                  # the batch in flight finishes
            if stop.requested:
                break                   # leave the outputs consistent, then
    stop.raise_if_requested("rerun the same command to resume")  # exit 128 + signal

The first signal only sets `requested`; a second one abandons the work in flight
at once (raising `Abandoned`, a KeyboardInterrupt that carries the signal number).
Outside the main thread (where handlers cannot be set) the context does nothing.
"""
from __future__ import annotations

import logging
import signal
import threading

from rv2.errors import InterruptedRun

log = logging.getLogger("rv2")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Abandoned(KeyboardInterrupt):
    """A second stop signal: the work in flight is dropped."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopRequests:
    def __init__(self, signals=STOP_SIGNALS):
        self.signals = tuple(signals)
        self.requested: int | None = None
        self._old: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:
            raise Abandoned(signum)
        self.requested = signum
        log.warning("%s received: finishing the batch in flight, then stopping (send it again "
                    "to stop at once)", signal.Signals(signum).name)

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()

    def raise_if_requested(self, what: str) -> None:
        """InterruptedRun (exit 128 + signal) with `what` (where things stand, how to
        resume) when a stop was requested."""
        if self.requested is not None:
            raise InterruptedRun(f"stopped by {signal.Signals(self.requested).name}: {what}",
                                 self.requested)


def interrupted(exc: KeyboardInterrupt, what: str) -> InterruptedRun:
    """The InterruptedRun for a KeyboardInterrupt (Ctrl-C outside StopRequests, or Abandoned)."""
    signum = getattr(exc, "signum", signal.SIGINT)
    return InterruptedRun(f"stopped by {signal.Signals(signum).name}: {what}", signum)


__all__ = ["StopRequests", "Abandoned", "interrupted", "STOP_SIGNALS"]
