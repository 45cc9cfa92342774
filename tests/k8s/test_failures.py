"""Start-up that never hangs silently: impossible requests are explained, on the real cluster.

Each scenario waits only until the platform has said what is wrong, then checks that
``diagnose()`` — the text of the session's start-up error — quotes it with a fix.
"""

from __future__ import annotations

import time

import pytest

from kubemagic.k8s import manifests as m

from .helpers import admin, engine_set, leftovers, make_tenant, new_cluster, wait_until

pytestmark = pytest.mark.cluster


def _wait_for_reason(launcher, reasons, timeout=90):
    def found():
        return [s for s in launcher.engine_states() if s["reason"] in reasons]

    return wait_until(found, timeout, interval=0.2)


def _start(cluster, loop, n):
    loop.run(cluster.start_controller())
    loop.run(cluster.start_engines(n))
    return engine_set(cluster)


def test_nonexistent_image_is_quoted(k8s_cluster, tmp_path, loop):
    tenant = make_tenant(k8s_cluster, "noimage")
    cluster = new_cluster(k8s_cluster, tenant, tmp_path, image="kubemagic-no-such-image:404")
    try:
        launcher = _start(cluster, loop, 1)
        t0 = time.monotonic()
        assert _wait_for_reason(launcher, {"ErrImagePull", "ImagePullBackOff"}), (
            launcher.engine_states()
        )
        print(f"\nimage pull failure visible after {time.monotonic() - t0:.1f} s")
        text = loop.run(launcher.diagnose())
        print(text)
        assert "kubemagic-no-such-image:404" in text
        assert "fix: check that --image exists" in text
    finally:
        loop.run(cluster.stop_cluster(), timeout=120)
    assert leftovers(k8s_cluster, tenant.namespace) == {"jobs": [], "pods": [], "secrets": []}


def test_thousand_cpus_is_unschedulable_and_quoted(k8s_cluster, tmp_path, loop):
    tenant = make_tenant(k8s_cluster, "cpus")
    cluster = new_cluster(k8s_cluster, tenant, tmp_path, cpu="1000")
    try:
        launcher = _start(cluster, loop, 1)
        assert _wait_for_reason(launcher, {"Unschedulable"}), launcher.engine_states()
        text = loop.run(launcher.diagnose())
        print(text)
        assert "Insufficient cpu" in text
        assert "FailedScheduling" in text  # the scheduler's event, quoted
        assert "lower --cpu" in text
    finally:
        loop.run(cluster.stop_cluster(), timeout=120)
    assert leftovers(k8s_cluster, tenant.namespace) == {"jobs": [], "pods": [], "secrets": []}


@pytest.fixture
def two_gpus(k8s_cluster):
    """Advertise ``nvidia.com/gpu: 2`` on the node (node-status patch, as the Kubernetes docs
    do for extended resources); removed afterwards."""
    core, _ = admin(k8s_cluster)
    node = core.list_node().items[0].metadata.name
    path = "/status/capacity/nvidia.com~1gpu"
    core.patch_node_status(node, [{"op": "add", "path": path, "value": "2"}])
    assert wait_until(
        lambda: (core.read_node(node).status.allocatable or {}).get("nvidia.com/gpu") == "2", 30
    )
    yield node
    core.patch_node_status(node, [{"op": "remove", "path": path}])


def test_gpu_request_reaches_the_scheduler(k8s_cluster, tmp_path, loop, two_gpus):
    tenant = make_tenant(k8s_cluster, "gpu")
    cluster = new_cluster(k8s_cluster, tenant, tmp_path, gpu=1)
    try:
        launcher = _start(cluster, loop, 3)
        rc = loop.run(cluster.connect_client())
        try:
            rc.wait_for_engines(2, timeout=120)
            pending = _wait_for_reason(launcher, {"Unschedulable"})
            # which index waits is the scheduler's choice: exactly one does
            assert len(pending) == 1, launcher.engine_states()
            assert "Insufficient nvidia.com/gpu" in pending[0]["message"]
            time.sleep(2)
            assert len(rc.ids) == 2  # the third never ran
            text = loop.run(launcher.diagnose())
            assert "2 of 3 engine pods running" in text
            assert "Insufficient nvidia.com/gpu" in text and "lower --gpu" in text
            core, _ = admin(k8s_cluster)
            pod = core.read_namespaced_pod(pending[0]["name"], tenant.namespace)
            assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"
        finally:
            rc.close()
    finally:
        loop.run(cluster.stop_cluster(), timeout=120)
    assert leftovers(k8s_cluster, tenant.namespace) == {"jobs": [], "pods": [], "secrets": []}


def test_unreachable_controller_address_fails_fast_and_is_quoted(k8s_cluster, tmp_path, loop):
    tenant = make_tenant(k8s_cluster, "unreach")
    wrong = "10.88.0.99"  # on the pods' network, but nobody is there
    cluster = new_cluster(k8s_cluster, tenant, tmp_path, controller_location=wrong)
    try:
        launcher = _start(cluster, loop, 2)
        t0 = time.monotonic()
        # engines give up registering, exit 17, the podFailurePolicy fails the Job
        assert wait_until(lambda: launcher.state == "after", 90, interval=0.2), (
            launcher.engine_states()
        )
        print(f"\nunreachable controller: Job failed after {time.monotonic() - t0:.1f} s")
        assert launcher.stop_data["exit_code"] == m.EXIT_CONTROLLER_GONE
        text = loop.run(launcher.diagnose())
        print(text)
        assert f"no registration reply from the controller at tcp://{wrong}:" in text
        assert "exit code 17" in text and "--controller-address" in text
        assert wait_until(
            lambda: (
                leftovers(k8s_cluster, tenant.namespace) == {"jobs": [], "pods": [], "secrets": []}
            ),
            60,
        )
    finally:
        loop.run(cluster.stop_cluster(), timeout=120)


def test_crashing_engine_is_quoted_with_its_last_lines(k8s_cluster, tmp_path, loop):
    tenant = make_tenant(k8s_cluster, "crash")
    crash = "import sys; print('ImportError: no module named mylib', flush=True); sys.exit(3)"
    cluster = new_cluster(k8s_cluster, tenant, tmp_path, engine_cmd=["python", "-c", crash])
    try:
        launcher = _start(cluster, loop, 1)

        def failed_once():
            return any(
                p["status"].get("phase") == "Failed" for p in launcher._mirror.pods_with_history()
            )

        assert wait_until(failed_once, 90, interval=0.2), launcher.engine_states()
        text = loop.run(launcher.diagnose())
        print(text)
        assert "Failed — Error (exit code 3)" in text
        assert "ImportError: no module named mylib" in text  # the log tail, via the pod status
        assert "is kubemagic installed in --image?" in text
        assert launcher.state == "running"  # a crash is retried, not fatal to the Job
    finally:
        loop.run(cluster.stop_cluster(), timeout=120)
    assert leftovers(k8s_cluster, tenant.namespace) == {"jobs": [], "pods": [], "secrets": []}
