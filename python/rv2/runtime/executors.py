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


def make_executor(name: str, batch_size: int = 8, slots: int | None = None,
                  cuda_streams: bool = False, cuda_graph: bool = False, speculate: bool = False):
    """inprocess: one batch at a time; native: rv2._C's pipeline scheduler; python: its
    twin; auto: native where built, else inprocess. `cuda_streams`, `cuda_graph`: the
    pipeline executors' CUDA options (`rv2.runtime.cuda_overlap`); `speculate`: theirs too
    (`rv2.runtime.pipeline_scheduler`)."""
    name = default_executor() if name == "auto" else name
    if name == "inprocess":
        if cuda_streams or cuda_graph or speculate:
            raise UserError("cuda_streams, cuda_graph and speculate are options of the pipeline "
                            "executors: use --executor native or python")
        return InProcessExecutor(batch_size)
    if name == "native" and native_scheduler() is None:
        raise UserError(f"--executor native: rv2._C has no pipeline scheduler ({_native.NATIVE_ERROR}); "
                        "build it (make native) or use --executor python or inprocess")
    if name in ("native", "python"):
        return ContinuousExecutor(capacity=slots or batch_size, batch_size=batch_size, backend=name,
                                  cuda_streams=cuda_streams, cuda_graph=cuda_graph,
                                  speculate=speculate)
    raise UserError(f"unknown executor {name!r}; use one of {', '.join(NAMES)}")


__all__ = ["make_executor", "default_executor", "NAMES"]
