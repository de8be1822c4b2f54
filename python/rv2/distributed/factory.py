"""The names the CLI wires in: `--executor ray` for `rv2 generate` and `rv2 predict`."""
from __future__ import annotations

from rv2.errors import UserError


def make_executor(kind: str, **options):
    """A Ray executor for `kind` ("generate" or "predict"); options as the CLI names them
    (address, workers, gpus_per_worker, cpus_per_worker, batch_size); None means default."""
    opts = {k: v for k, v in options.items() if v is not None}
    if kind == "generate":
        from rv2.distributed.generate import RayExecutor

        return RayExecutor(**opts)
    if kind == "predict":
        from rv2.distributed.predict import RayPredictExecutor

        return RayPredictExecutor(**opts)
    raise UserError(f"the ray executor runs generate or predict, not {kind!r}")


__all__ = ["make_executor"]
