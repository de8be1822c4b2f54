"""Connecting to Ray: a local cluster, an existing one (`auto`) or a Ray Client address."""
from __future__ import annotations

import logging

from rv2.errors import UserError

log = logging.getLogger("rv2.distributed")


def require_ray():
    """The `ray` module, or a one-line UserError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray, which is not installed here: "
                        "pip install 'rv2[ray]'") from None
    return ray


def connect(address: str | None = None, *, num_cpus: int | None = None,
            num_gpus: int | None = None, include_dashboard: bool | None = None) -> dict:
    """Join the cluster at `address` ("auto": the one started on this node with `ray start`;
    "ray://HOST:PORT": Ray Client), or start a local one when None. Reuses an existing
    connection. Returns the address, the dashboard URL (None when Ray has none) and the
    cluster's resources."""
    ray = require_ray()
    if not ray.is_initialized():
        kwargs = dict(address=address, ignore_reinit_error=True, log_to_driver=False,
                      logging_level=logging.WARNING)
        if address is None:
            kwargs.update(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=include_dashboard)
        try:
            ctx = ray.init(**kwargs)
        except ConnectionError as exc:
            raise UserError(f"cannot reach a Ray cluster at {address!r} ({exc}); start one with "
                            "`ray start --head` or give --address ray://HOST:10001") from None
        dashboard = getattr(ctx, "dashboard_url", None)
    else:
        dashboard = None   # joined by someone else (a test, a notebook): no link to give
    res = ray.cluster_resources()
    info = {"address": ray.get_runtime_context().gcs_address,
            "dashboard_url": f"http://{dashboard}" if dashboard and "://" not in dashboard else dashboard,
            "cpus": float(res.get("CPU", 0)), "gpus": float(res.get("GPU", 0)),
            "nodes": len([n for n in ray.nodes() if n.get("Alive")])}
    return info


__all__ = ["connect", "require_ray"]
