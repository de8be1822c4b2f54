"""One local Ray cluster per test module (3 CPU slots, no dashboard)."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module")
def ray_cluster():
    """The address of a local Ray cluster started for this module; drivers in subprocesses
    join it with --address. Worker processes inherit this process's environment."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # The raylet waits for its agents (Python processes) to report their ports; on a busy
    # host their imports outlast the default.
    os.environ.setdefault("RAY_agent_register_timeout_ms", "180000")
    for tries in range(3):   # Ray waits 30 s for its raylet: too short on an overloaded host
        try:
            ctx = ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False,
                           logging_level="ERROR")
            break
        except Exception as exc:
            ray.shutdown()
            if tries == 2 or "timed out during startup" not in str(exc):
                raise
    try:
        yield ctx.address_info["gcs_address"]
    finally:
        ray.shutdown()
