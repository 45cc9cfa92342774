"""The engine Job ends under a running map (an admin deletes it, a quota controller or a
cleanup script removes it): the map fails at once with the reason, instead of waiting
``start_timeout`` for engines that cannot come, and the session stops cleanly afterwards.

The start timeout is set far above the test's own run time, so a map that only waited for
engines would end with the starvation message, not with the Job's fate: the test tells
the two apart by the message, with no wall-clock assertion.
"""

from __future__ import annotations

import time

import ipyparallel as ipp
import pytest

from kubemagic.errors import KubemagicError

from ._support import NOTHING, admin, clean_process_env, leftovers, make_tenant, new_session

pytestmark = pytest.mark.cluster


@ipp.interactive  # pickled by value: engine pods cannot import the tests package
def slow(x: int) -> int:
    import time

    time.sleep(0.05)
    return x


def test_a_deleted_job_fails_the_running_map_with_the_reason(k8s_cluster):
    with clean_process_env():
        tenant = make_tenant(k8s_cluster, "jobgone")
        s = new_session(k8s_cluster, tenant, n=2, start_timeout=600).start()
        try:
            handle = s.map_async(slow, range(2000))
            while handle.progress().done < 20 and not handle.done():
                time.sleep(0.05)
            _, batch = admin(k8s_cluster)
            batch.delete_namespaced_job(s.launcher.job_name, tenant.namespace,
                                        propagation_policy="Background")
            with pytest.raises(KubemagicError) as failed:
                handle.result()
            message = str(failed.value)
            print(f"\nmap after its Job was deleted: {message}")
            assert "no engine has been available" not in message, message
            assert "the engines stopped" in message and "was deleted" in message, message
            assert "%kubemap stop" in message, "the error must say how to go on"
        finally:
            s.stop()
        assert leftovers(k8s_cluster, tenant.namespace) == NOTHING
