"""How long engines take on the real cluster (printed with ``-s``; bounds are generous:
these are measurements, not timed tests).

* Job created → all engines registered, for 2 and 8 engines;
* scale 2 → 4: patch → the 2 new engines registered.

Heartbeat period 100 ms, as the session uses: registration completes at the first
heartbeat after the engine connects.
"""

from __future__ import annotations

import time

import pytest

from .helpers import engine_set, make_tenant, new_cluster

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("n", [2, 8])
def test_job_create_to_all_engines_registered(k8s_cluster, tmp_path, loop, n):
    tenant = make_tenant(k8s_cluster, f"time{n}")
    cluster = new_cluster(k8s_cluster, tenant, tmp_path, heartbeat_ms=100)
    loop.run(cluster.start_controller())
    rc = loop.run(cluster.connect_client())
    try:
        t0 = time.monotonic()
        loop.run(cluster.start_engines(n))
        created = time.monotonic() - t0
        rc.wait_for_engines(n, timeout=180)
        ready = time.monotonic() - t0
        print(
            f"\n{n} engines: Job+Secret created in {created:.2f} s, all registered at {ready:.2f} s"
        )
        assert ready < 120

        if n == 2:
            launcher = engine_set(cluster)
            t0 = time.monotonic()
            loop.run(launcher.scale(4))
            rc.wait_for_engines(4, timeout=180)
            print(f"scale 2 -> 4: new engines registered after {time.monotonic() - t0:.2f} s")
    finally:
        rc.close()
        loop.run(cluster.stop_cluster(), timeout=180)
