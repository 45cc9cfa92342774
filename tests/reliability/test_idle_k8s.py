"""Idle engines on Kubernetes: scaled to zero pods after the idle timeout, back for the next map."""

from __future__ import annotations

import time

import pytest

from ._support import NOTHING, clean_process_env, engine_pods, leftovers, make_tenant, new_session

pytestmark = pytest.mark.cluster


def test_idle_timeout_scales_pods_to_zero_and_the_next_map_works(k8s_cluster, capsys):
    tenant = make_tenant(k8s_cluster, "idle")
    with clean_process_env():
        s = new_session(k8s_cluster, tenant, n=2, idle_timeout=3).start()
        try:
            s.push(offset=7)
            assert s.map(abs, [-1, -2], progress=False) == [1, 2]
            idle_from = time.monotonic()
            deadline = idle_from + 90
            while engine_pods(k8s_cluster, tenant.namespace, s.cluster_id):
                assert time.monotonic() < deadline, "engine pods still there 90 s after the map"
                time.sleep(0.25)
            gone = time.monotonic() - idle_from
            assert s.n == 0 and "scaled to zero" in s.status()["notice"]
            assert leftovers(k8s_cluster, tenant.namespace)["jobs"], "the Job itself must stay"
            capsys.readouterr()
            t0 = time.monotonic()
            # as if defined in a notebook (__main__): it finds the push on the engines
            add = eval("lambda x: x + offset", {"__name__": "__main__"})
            assert s.map(add, [1, 2], progress=False) == [8, 9]
            back = time.monotonic() - t0
            assert "starting 2 again" in capsys.readouterr().out
            assert s.n == 2 and len(s.ready_ids()) == 2
        finally:
            s.stop()
    assert leftovers(k8s_cluster, tenant.namespace) == NOTHING
    print(f"\nidle timeout 3 s: 0 engine pods {gone:.1f} s after the map ended "
          f"({gone - 3:.1f} s after the timeout); the next map's wake-up and map took {back:.1f} s")
