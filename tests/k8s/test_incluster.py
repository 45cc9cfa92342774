"""The JupyterHub case: the kernel itself runs in a pod, and every default comes from there.

A "kernel" pod (the engine image, the ``kubemagic`` service account bound by ``kubemagic
rbac``) calls ``kubernetes_backend()`` with no options at all: in-cluster config, the
service account's namespace, its own pod's image and pod IP. Its engines must run, be
owned by the kernel's pod, and vanish when that pod is deleted.
"""

from __future__ import annotations

import time

import pytest
from kubernetes import client

from kubemagic.k8s import manifests as m

from .helpers import admin, leftovers, make_tenant, wait_until

pytestmark = pytest.mark.cluster

KERNEL_SCRIPT = r"""
import os, sys, time
import ipyparallel as ipp
from kubemagic.k8s.backend import kubernetes_backend

spec = kubernetes_backend()  # nothing given: everything from the pod
conf = spec.config["KubernetesEngineSetLauncher"]
print("SPEC", spec.controller_location, conf["namespace"], conf["image"], flush=True)
os.environ["IPP_ENABLE_CURVE"] = "1"
cluster = ipp.Cluster(
    controller_ip=spec.controller_ip, controller_location=spec.controller_location,
    controller_args=["--IPController.use_threads=True", "--HeartMonitor.period=500",
                     *spec.controller_args],
    engine_launcher_class=spec.engine_launcher_class, config=spec.config,
    profile_dir="/tmp/profile", shutdown_atexit=False)
rc = cluster.start_and_connect_sync(n=2)

@ipp.interactive
def where():
    import os
    return int(os.environ["KUBEMAGIC_ENGINE_INDEX"])

print("RESULT", sorted(rc[:].apply_sync(where)), flush=True)
time.sleep(3600)  # the test deletes this pod, as JupyterHub deletes a stopped server
"""


def _kernel_pod(name: str, image: str) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels={"component": "singleuser-server"}),
        spec=client.V1PodSpec(
            service_account_name="kubemagic",
            restart_policy="Never",
            security_context=client.V1PodSecurityContext(run_as_user=1000, run_as_non_root=True),
            containers=[
                client.V1Container(
                    name="notebook",
                    image=image,
                    image_pull_policy="IfNotPresent",
                    command=["python", "-c", KERNEL_SCRIPT],
                    env=[
                        client.V1EnvVar(name="HOME", value="/tmp"),
                        client.V1EnvVar(name="IPYTHONDIR", value="/tmp/.ipython"),
                    ],
                )
            ],
        ),
    )


def test_kernel_in_a_pod_needs_no_options_and_owns_its_engines(k8s_cluster):
    tenant = make_tenant(k8s_cluster, "hub")
    core, batch = admin(k8s_cluster)
    ns = tenant.namespace
    core.create_namespaced_pod(ns, _kernel_pod("jupyter-alice", k8s_cluster.image))

    def log() -> str:
        try:
            return core.read_namespaced_pod_log("jupyter-alice", ns) or ""
        except client.ApiException:
            return ""

    assert wait_until(lambda: "RESULT" in log(), 180, interval=0.5), log()
    kernel = core.read_namespaced_pod("jupyter-alice", ns)
    spec_line = next(line for line in log().splitlines() if line.startswith("SPEC"))
    assert spec_line.split() == ["SPEC", kernel.status.pod_ip, ns, k8s_cluster.image]
    assert "RESULT [0, 1]" in log()

    (job,) = batch.list_namespaced_job(ns, label_selector="app.kubernetes.io/name=kubemagic").items
    assert [(o.kind, o.name, o.uid) for o in job.metadata.owner_references] == [
        ("Pod", "jupyter-alice", kernel.metadata.uid)
    ]
    pods = core.list_namespaced_pod(ns, label_selector=f"{m.JOB_NAME_LABEL}={job.metadata.name}")
    for pod in pods.items:  # engines never inherit the singleuser label (and its policies)
        assert "component" not in pod.metadata.labels

    # the notebook server goes away: its engines, Job and Secret follow
    t0 = time.monotonic()
    core.delete_namespaced_pod("jupyter-alice", ns, grace_period_seconds=0)
    assert wait_until(
        lambda: leftovers(k8s_cluster, ns) == {"jobs": [], "pods": [], "secrets": []}, 120, 0.5
    ), leftovers(k8s_cluster, ns)
    print(f"\nkernel pod deleted -> engines, Job, Secret gone after {time.monotonic() - t0:.1f} s")
