"""A SIGKILLed kernel outside the cluster leaves nothing, whatever state its Job is in
(issue 16, item 6).

With running engines, the engines notice the dead controller and fail the Job
(``test_kernel_death.py``). Here no engine runs: the fleet is scaled to zero, its pods are
Pending (no node fits), or its image cannot be pulled. Then only the session's lease —
the Job's own ``activeDeadlineSeconds``, which the kernel keeps moving forward — removes
the Job, its pods and its Secret. Each test measures the time from SIGKILL until none of
them is left, and checks it against the lease plus a bound for the Job controller, the
TTL controller and the garbage collector (:data:`CONTROLLERS_S`).

The lease is short here (:data:`LEASE_S`) to keep the tests quick; the default is 120 s.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from ._support import (
    SELECTOR,
    KubeKernel,
    admin,
    clean_process_env,
    kernel_env,
    make_tenant,
    session_cell,
    wait_for,
)

pytestmark = pytest.mark.cluster

LEASE_S = 8
#: after the lease ends: the Job controller fails the Job, the TTL controller deletes it,
#: the garbage collector its pods and Secret
CONTROLLERS_S = 30


def _objects(k8s_cluster: Any, ns: str) -> dict[str, list[str]]:
    core, batch = admin(k8s_cluster)
    return {
        "jobs": [j.metadata.name for j in batch.list_namespaced_job(ns, label_selector=SELECTOR).items],
        "pods": [p.metadata.name for p in core.list_namespaced_pod(ns, label_selector=SELECTOR).items],
        "secrets": [s.metadata.name for s in
                    core.list_namespaced_secret(ns, label_selector=SELECTOR).items],
    }


def _pods(k8s_cluster: Any, ns: str) -> list[Any]:
    return admin(k8s_cluster)[0].list_namespaced_pod(ns, label_selector=SELECTOR).items


def _kill_and_measure(k8s_cluster: Any, kernel: KubeKernel, pid: int, ns: str, what: str) -> float:
    """SIGKILL the kernel; seconds until no Job, pod or Secret of it is left."""
    before = _objects(k8s_cluster, ns)
    assert before["jobs"] and before["secrets"], before
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    limit = LEASE_S + CONTROLLERS_S
    while True:
        left = _objects(k8s_cluster, ns)
        took = time.monotonic() - t0
        if not any(left.values()):
            break
        assert took < limit, f"{what}: {took:.0f} s after SIGKILL still there: {left}"
        time.sleep(0.25)
    kernel.kill_hard()
    print(f"\n{what}: Job, pods and Secret gone {took:.1f} s after SIGKILL "
          f"(lease {LEASE_S} s)")
    return took


@pytest.fixture
def tenant(k8s_cluster):
    with clean_process_env():
        yield make_tenant(k8s_cluster, "lease")


def _kernel(k8s_cluster, tenant) -> tuple[KubeKernel, int]:
    kernel = KubeKernel(kernel_env(k8s_cluster, tenant))
    return kernel, kernel.pid()


def test_idle_fleet_at_zero_survives_while_the_kernel_lives_then_goes(k8s_cluster, tenant):
    kernel, pid = _kernel(k8s_cluster, tenant)
    try:
        kernel.run(session_cell(k8s_cluster, tenant, n=1, lease_seconds=LEASE_S)
                   + "s.scale(0)\n", timeout=180)
        wait_for(lambda: not _pods(k8s_cluster, tenant.namespace), 60, "no engine pod")
        # two leases at zero engines: the live kernel keeps renewing, the Job stays
        time.sleep(2 * LEASE_S + 2)
        job = admin(k8s_cluster)[1].list_namespaced_job(
            tenant.namespace, label_selector=SELECTOR).items[0]
        assert job.spec.parallelism == 0 and not job.spec.suspend
        assert job.spec.active_deadline_seconds > 2 * LEASE_S  # renewed
        assert not [c for c in job.status.conditions or [] if c.status == "True"]
        out = kernel.run("s.scale(1)\n"
                         "print(s.map(abs, [-3], progress=False))", timeout=180)
        assert out.strip().endswith("[3]")
        kernel.run("s.scale(0)")
        wait_for(lambda: not _pods(k8s_cluster, tenant.namespace), 60, "no engine pod")
        _kill_and_measure(k8s_cluster, kernel, pid, tenant.namespace, "scaled to zero")
    finally:
        kernel.kill_hard()


def _kill_while_starting(k8s_cluster, tenant, what: str, ready: Any, **options: Any) -> None:
    """Start a session whose engines cannot run; SIGKILL the kernel once ``ready(pods)``."""
    kernel, pid = _kernel(k8s_cluster, tenant)
    try:
        kernel.submit(session_cell(k8s_cluster, tenant, n=2, lease_seconds=LEASE_S,
                                   start_timeout=600, **options))
        wait_for(lambda: len(_pods(k8s_cluster, tenant.namespace)) == 2
                 and all(ready(p) for p in _pods(k8s_cluster, tenant.namespace)),
                 120, f"engine pods {what}")
        _kill_and_measure(k8s_cluster, kernel, pid, tenant.namespace, what)
    finally:
        kernel.kill_hard()


def test_pending_pods_go_with_the_kernel(k8s_cluster, tenant):
    def pending(pod: Any) -> bool:
        return pod.status.phase == "Pending" and any(
            c.reason == "Unschedulable" for c in pod.status.conditions or [])

    _kill_while_starting(k8s_cluster, tenant, "all pods Pending (unschedulable)", pending,
                         node_selector={"kubemagic.io/no-such-node": "1"})


def test_pods_with_a_bad_image_go_with_the_kernel(k8s_cluster, tenant):
    def cannot_pull(pod: Any) -> bool:
        return any(s.state.waiting and s.state.waiting.reason in ("ErrImageNeverPull",
                                                                  "ErrImagePull",
                                                                  "ImagePullBackOff")
                   for s in pod.status.container_statuses or [])

    _kill_while_starting(k8s_cluster, tenant, "image cannot be pulled", cannot_pull,
                         image="kubemagic-no-such-image:1", image_pull_policy="Never")
