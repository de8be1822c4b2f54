"""Executors by name, for the CLI (`rv2 generate --executor NAME`)."""
from __future__ import annotations

from rv2 import _native
from rv2.errors import UserError
from rv2.generate.executor import InProcessExecutor
from rv2.runtime.continuous_executor import ContinuousExecutor
from rv2.runtime.pipeline_scheduler import native_scheduler

NAMES = ("auto", "native", "python", "inprocess")


def default_executor() -> str:
    """native where rv2._C has the scheduler, else inprocess."""
    return "native" if native_scheduler() is not None else "inprocess"


def make_executor(name: str, batch_size: int = 8, slots: int | None = None):
    """inprocess: one batch at a time; native: rv2._C's pipeline scheduler; python: its
    twin; auto: native where built, else inprocess."""
    name = default_executor() if name == "auto" else name
    if name == "inprocess":
        return InProcessExecutor(batch_size)
    if name == "native" and native_scheduler() is None:
        raise UserError(f"--executor native: rv2._C has no pipeline scheduler ({_native.NATIVE_ERROR}); "
                        "build it (make native) or use --executor python or inprocess")
    if name in ("native", "python"):
        return ContinuousExecutor(capacity=slots or batch_size, batch_size=batch_size, backend=name)
    raise UserError(f"unknown executor {name!r}; use one of {', '.join(NAMES)}")


__all__ = ["make_executor", "default_executor", "NAMES"]
