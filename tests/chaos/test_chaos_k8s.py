"""Short chaos run on the real cluster in CI: engine pods deleted and engine processes
killed inside their containers during maps; no item lost or duplicated.

Runs as the least-privilege service account of ``kubemagic rbac`` (the pod deletions use
the session's own API access). The long run is by hand, see ``tests/chaos/chaos.py``.
"""

from __future__ import annotations

import pytest

from tests.k8s.helpers import leftovers, make_tenant
from tests.reliability._support import NOTHING, clean_process_env

from .chaos import run

pytestmark = pytest.mark.cluster


def test_random_pod_and_process_kills_lose_and_duplicate_nothing(k8s_cluster):
    tenant = make_tenant(k8s_cluster, "chaos")
    options = {"image": k8s_cluster.image, "namespace": tenant.namespace,
               "controller_address": k8s_cluster.host_ip, "kubeconfig": tenant.kubeconfig}
    with clean_process_env():
        totals = run(maps=3, kills=4, n_items=300, backend="kubernetes", seed=5,
                     options=options, process_kill_share=0.5)
    print(f"\nchaos (kubernetes, short): {totals}")
    assert totals["backend"] == "kubernetes" and totals["maps"] == 3
    assert totals["kills"] >= 3, totals
    assert totals["failed_maps"] == 0, totals["errors"]
    assert totals["lost"] == 0 and totals["duplicated"] == 0, totals
    assert totals["unexecuted"] == 0 and totals["executions"] >= totals["items"], totals
    assert totals["retried_chunks"] >= 1, totals
    assert leftovers(k8s_cluster, tenant.namespace) == NOTHING
