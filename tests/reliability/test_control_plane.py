"""Control-plane restarts under a running session (issue 16, item 4).

Managed clusters upgrade their API servers under running sessions; etcd and the controller
manager restart too. Each test SIGKILLs one component in the middle of a map
(``tests/cluster/restart``, which starts it again with the same command line): the map must
complete with every item once, and scaling must work afterwards. A scale requested while the
API server is down is applied once it is back (``kubemagic.k8s.client.through_outage``).
The engines never talk to the API server, so a map only depends on the controller in the
kernel; what can break is the launcher's watch, its lease renewals and its API calls.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.cluster.nodes import restart

from ._support import clean_process_env, make_tenant, new_session

pytestmark = pytest.mark.cluster

ITEMS = 150
CODE = '''
import time
def nap(x):
    time.sleep(0.04)
    return x * 3
'''


def _nap() -> Any:
    namespace = {"__name__": "__main__"}
    exec(CODE, namespace)
    return namespace["nap"]


@pytest.fixture
def session(k8s_cluster):
    tenant = make_tenant(k8s_cluster, "ctlplane")
    with clean_process_env():
        s = new_session(k8s_cluster, tenant, n=2, idle_timeout=0).start()
        try:
            yield s
        finally:
            s.stop()


def _map_through(session: Any, component: str) -> tuple[float, float, str]:
    """A map with ``component`` restarted in its middle: (map seconds, baseline seconds,
    the restart script's report)."""
    nap = _nap()
    t0 = time.monotonic()
    assert session.map(nap, range(ITEMS), progress=False) == [x * 3 for x in range(ITEMS)]
    baseline = time.monotonic() - t0
    t0 = time.monotonic()
    handle = session.map_async(nap, range(ITEMS))
    time.sleep(0.5)
    report = restart(component)
    assert handle.result(timeout=300) == [x * 3 for x in range(ITEMS)]
    took = time.monotonic() - t0
    print(f"\n{component} restarted during a map: {took:.1f} s vs {baseline:.1f} s without; "
          f"{report.strip().splitlines()[-1]}")
    return took, baseline, report


@pytest.mark.parametrize("component", ["apiserver", "etcd", "controller-manager"])
def test_a_map_survives_a_restart_and_scaling_works_after(session, component):
    _map_through(session, component)
    session.scale(3)
    assert sorted(session.map(abs, [-1, -2, -3, -4], progress=False)) == [1, 2, 3, 4]
    assert len(session.ready_ids()) == 3
    session.scale(2)
    deadline = time.monotonic() + 60
    while session.n != 2 or len(session.ready_ids()) != 2:
        assert time.monotonic() < deadline, "the fleet did not shrink back to 2"
        time.sleep(0.2)


def _apiserver_down(k8s_cluster: Any) -> bool:
    return k8s_cluster.run_kubectl("get", "--raw", "/readyz", check=False, timeout=5).returncode != 0


def test_a_scale_asked_during_an_apiserver_outage_is_applied_after_it(session, k8s_cluster):
    outage = threading.Thread(target=restart, args=("apiserver",))
    outage.start()
    try:
        deadline = time.monotonic() + 30
        while not _apiserver_down(k8s_cluster):
            assert time.monotonic() < deadline, "the API server never went down"
            time.sleep(0.05)
        t0 = time.monotonic()
        session.scale(3)  # waits through the outage, then for the third engine
        print(f"\nscale to 3 asked during an API server outage: done after {time.monotonic() - t0:.1f} s")
    finally:
        outage.join()
    assert len(session.ready_ids()) == 3
    assert session.map(abs, [-5, -6, -7], progress=False) == [5, 6, 7]
