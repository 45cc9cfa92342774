"""Engines as pods of one Indexed Job, on the real cluster, as a least-privilege service account.

Plain ``ipp.Cluster(engines="kubernetes")`` — the entry point ipyparallel users get — with
the controller beside the test process and CurveZMQ on.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time

import ipyparallel as ipp
import pytest
from ipyparallel.cluster.launcher import NotRunning

from kubemagic.k8s import manifests as m
from kubemagic.k8s.launcher import KubernetesEngineSetLauncher

from .helpers import (
    ENGINE_HEARTBEAT_MISSES,
    HEARTBEAT_MS,
    admin,
    engine_set,
    leftovers,
    make_tenant,
    new_cluster,
    raw,
    started,
    wait_until,
)

pytestmark = pytest.mark.cluster


@pytest.fixture
def curve(monkeypatch):
    monkeypatch.setenv("IPP_ENABLE_CURVE", "1")


@ipp.interactive  # pickled by value: engines cannot import the tests package
def _whoami():
    import os
    import socket

    return (
        int(os.environ["KUBEMAGIC_ENGINE_INDEX"]),
        socket.gethostname(),
        os.environ["KUBEMAGIC_POD_NAME"],
        os.getuid(),
    )


def _connection_info(cluster) -> dict:
    with open(engine_set(cluster).connection_files["engine"]) as f:
        return json.load(f)


def test_plain_ipyparallel_engines_run_in_labelled_pods(k8s_cluster, tmp_path, loop, curve):
    tenant = make_tenant(k8s_cluster, "plain")
    core, batch = admin(k8s_cluster)
    cluster = new_cluster(k8s_cluster, tenant, tmp_path)
    with started(cluster, loop, 2) as rc:
        t0 = time.monotonic()
        rc.wait_for_engines(2, timeout=120)
        print(f"\n2 engines registered {time.monotonic() - t0:.2f} s after the Job's creation")
        results = sorted(rc[:].apply_sync(_whoami))
        assert [r[0] for r in results] == [0, 1]
        assert all(r[3] == 1000 for r in results), "engines must run as non-root uid 1000"
        pod_names = {r[2] for r in results}
        job_name = engine_set(cluster).job_name
        assert all(host == f"{job_name}-{i}" for i, host, _, _ in results)  # Indexed Job hostnames

        states = engine_set(cluster).engine_states()
        assert [(s["index"], s["phase"]) for s in states] == [(0, "Running"), (1, "Running")]
        assert {s["name"] for s in states} == pod_names

        # labels: ours, and never JupyterHub's singleuser ones
        job = batch.read_namespaced_job(job_name, tenant.namespace)
        pods = core.list_namespaced_pod(
            tenant.namespace, label_selector=f"{m.JOB_NAME_LABEL}={job_name}"
        ).items
        assert {p.metadata.name for p in pods} == pod_names
        for labels in [job.metadata.labels] + [p.metadata.labels for p in pods]:
            assert labels[m.LABEL_NAME] == "kubemagic"
            assert labels[m.LABEL_INSTANCE] == cluster.cluster_id
            assert labels[m.LABEL_COMPONENT] == "engine"
            assert m.LABEL_OWNER in labels
            assert "component" not in labels and not any(
                k.startswith("hub.jupyter.org") for k in labels
            )

        # the keys live in the Secret only: not in the Job, the pods, or their logs
        info = _connection_info(cluster)
        secret_value = info["curve_serverkey"]
        assert secret_value, "CurveZMQ must be on"
        secret = core.read_namespaced_secret(job_name, tenant.namespace)
        assert json.loads(base64.b64decode(secret.data[m.SECRET_KEY])) == info
        assert [o.kind for o in secret.metadata.owner_references] == ["Job"]
        assert secret_value not in raw(job, k8s_cluster)
        for pod in pods:
            assert secret_value not in raw(pod, k8s_cluster)
            log = core.read_namespaced_pod_log(pod.metadata.name, tenant.namespace)
            assert "Completed registration" in log and secret_value not in log
        assert secret_value not in engine_set(cluster).get_output()
    assert leftovers(k8s_cluster, tenant.namespace) == {"jobs": [], "pods": [], "secrets": []}


def test_scale_up_and_down_removes_highest_indices(k8s_cluster, tmp_path, loop):
    tenant = make_tenant(k8s_cluster, "scale")
    core, _ = admin(k8s_cluster)
    cluster = new_cluster(k8s_cluster, tenant, tmp_path)
    with started(cluster, loop, 2) as rc:
        rc.wait_for_engines(2, timeout=120)
        launcher = engine_set(cluster)

        t0 = time.monotonic()
        loop.run(launcher.scale(4))
        rc.wait_for_engines(4, timeout=120)
        print(f"\nscale 2 -> 4: all 4 engines registered after {time.monotonic() - t0:.2f} s")
        with open(cluster.cluster_file) as f:  # what ipcluster and a reattaching kernel read
            assert json.load(f)["engines"]["sets"][launcher.engine_set_id]["n"] == 4
        assert sorted(r[0] for r in rc[:].apply_sync(_whoami)) == [0, 1, 2, 3]

        t0 = time.monotonic()
        loop.run(launcher.scale(2))
        # removed engines unregister on SIGTERM: the hub drops them at once
        assert wait_until(lambda: len(rc.ids) == 2, 60), rc.ids
        print(f"scale 4 -> 2: hub down to 2 engines after {time.monotonic() - t0:.2f} s")
        assert sorted(r[0] for r in rc[:].apply_sync(_whoami)) == [0, 1]
        selector = f"{m.JOB_NAME_LABEL}={launcher.job_name}"
        assert wait_until(
            lambda: (
                len(core.list_namespaced_pod(tenant.namespace, label_selector=selector).items) == 2
            ),
            60,
        )
        assert [s["index"] for s in launcher.engine_states()] == [0, 1]

        # without CurveZMQ the HMAC key signs messages: it too stays in the Secret only
        key = _connection_info(cluster)["key"]
        assert key
        job = admin(k8s_cluster)[1].read_namespaced_job(launcher.job_name, tenant.namespace)
        assert key not in raw(job, k8s_cluster)
        for pod in core.list_namespaced_pod(tenant.namespace, label_selector=selector).items:
            assert key not in raw(pod, k8s_cluster)
            assert key not in core.read_namespaced_pod_log(pod.metadata.name, tenant.namespace)

        # scale to 0 keeps the Job with parallelism 0 (0 completions would complete it, and
        # suspending would stop its lease clock)
        loop.run(launcher.scale(0))
        assert wait_until(lambda: not rc.ids, 60), rc.ids
        spec = admin(k8s_cluster)[1].read_namespaced_job(launcher.job_name, tenant.namespace).spec
        assert (spec.parallelism, spec.suspend) == (0, False)
        loop.run(launcher.scale(1))
        rc.wait_for_engines(1, timeout=120)
        assert [r[0] for r in rc[:].apply_sync(_whoami)] == [0]
    assert leftovers(k8s_cluster, tenant.namespace) == {"jobs": [], "pods": [], "secrets": []}


def test_controller_loss_fails_the_job_and_everything_disappears(k8s_cluster, tmp_path, loop):
    tenant = make_tenant(k8s_cluster, "gone")
    core, batch = admin(k8s_cluster)
    cluster = new_cluster(k8s_cluster, tenant, tmp_path)
    loop.run(cluster.start_controller())
    try:
        loop.run(cluster.start_engines(2))
        rc = loop.run(cluster.connect_client())
        rc.wait_for_engines(2, timeout=120)
        rc.close()
        launcher = engine_set(cluster)
        t0 = time.monotonic()
        os.killpg(cluster.controller.pid, signal.SIGKILL)  # the kernel died, hard

        def gone():
            return leftovers(k8s_cluster, tenant.namespace) == {
                "jobs": [],
                "pods": [],
                "secrets": [],
            }

        limit = ENGINE_HEARTBEAT_MISSES * (HEARTBEAT_MS / 1000 + 0.5) + 30
        assert wait_until(gone, limit, interval=0.2), (
            f"still there after {limit:.0f} s: {leftovers(k8s_cluster, tenant.namespace)}"
        )
        print(
            f"\ncontroller killed -> Job, pods and Secret gone after {time.monotonic() - t0:.1f} s"
        )
        assert launcher.state == "after"
        assert launcher.stop_data["exit_code"] == m.EXIT_CONTROLLER_GONE
        assert "PodFailurePolicy" in launcher.stop_data["reason"]
        assert "stopped sending heartbeats" in launcher.get_output()
    finally:
        loop.run(cluster.stop_cluster(), timeout=120)
    assert batch.list_namespaced_job(tenant.namespace).items == []


@ipp.interactive
def _nap(seconds):
    import time

    print("napping", flush=True)  # reaches the client while the task runs
    try:
        time.sleep(seconds)
    except KeyboardInterrupt:
        return "interrupted"
    return "slept"


def test_signals_reach_engine_processes_and_sigterm_ends_the_set(k8s_cluster, tmp_path, loop):
    tenant = make_tenant(k8s_cluster, "signal")
    cluster = new_cluster(k8s_cluster, tenant, tmp_path)
    with started(cluster, loop, 2) as rc:
        rc.wait_for_engines(2, timeout=120)
        launcher = engine_set(cluster)
        state = launcher.to_dict()
        again = KubernetesEngineSetLauncher.from_dict(state, engine_set_id=launcher.engine_set_id)
        assert again.job_name == launcher.job_name and again.namespace == tenant.namespace
        assert wait_until(
            lambda: [s["phase"] for s in again.engine_states()] == ["Running", "Running"], 30
        ), again.engine_states()

        # SIGINT reaches the engine processes through the controller (the Role grants no
        # pods/exec): their tasks are interrupted, the engines stay
        ar = rc[:].apply_async(_nap, 60)
        assert wait_until(lambda: all("napping" in out for out in ar.stdout), 30), ar.stdout
        loop.run(again.signal(signal.SIGINT))
        assert ar.get(timeout=30) == ["interrupted", "interrupted"]
        ids = sorted(rc.ids)

        # SIGTERM ends the engine set, as it ends local engines
        t0 = time.monotonic()
        loop.run(launcher.signal(signal.SIGTERM))
        assert wait_until(lambda: launcher.state == "after", 60), launcher.engine_states()
        print(f"\nSIGTERM: engine set ended after {time.monotonic() - t0:.2f} s")
        assert launcher.stop_data["exit_code"] == -signal.SIGTERM
        assert "SIGTERM" in launcher.stop_data["reason"]
        assert wait_until(lambda: not set(rc.ids) & set(ids), 30), rc.ids
        assert "Completed registration" in launcher.get_output()  # kept before the deletion
        assert wait_until(lambda: again.state == "after", 30)  # the reattached copy too
    with pytest.raises(NotRunning):
        KubernetesEngineSetLauncher.from_dict(state)


def test_without_a_running_loop_a_deleted_job_stops_the_engine_set(k8s_cluster, tmp_path):
    """A plain script: the *_sync calls each run a loop that is closed afterwards, so the
    launcher tells ipyparallel from its watch thread (poll() and on_stop callbacks)."""
    tenant = make_tenant(k8s_cluster, "noloop")
    _, batch = admin(k8s_cluster)
    cluster = new_cluster(k8s_cluster, tenant, tmp_path)
    try:
        cluster.start_cluster_sync(1)
        launcher = engine_set(cluster)
        stopped = []
        launcher.on_stop(stopped.append)
        assert launcher.poll() is None
        batch.delete_namespaced_job(
            launcher.job_name, tenant.namespace, propagation_policy="Background"
        )
        # poll() answers once stop_data is set; ipyparallel then runs the on_stop callbacks
        # in order (the cluster's first) on the watch thread: wait for ours too
        assert wait_until(lambda: launcher.poll() is not None and stopped, 60), \
            (launcher.poll(), stopped, launcher.engine_states())
        assert "was deleted" in stopped[0]["reason"]
    finally:
        cluster.stop_cluster_sync()
