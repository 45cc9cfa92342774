"""The shared read-only API questions, against the real cluster: does a namespace exist (as
a namespaced service account that may not read namespaces, and as an admin), and a pod's log."""

from __future__ import annotations

import pytest
from kubernetes.client.exceptions import ApiException

from kubemagic.k8s.client import connect, namespaced
from kubemagic.k8s.queries import NamespaceState, namespace_state, pod_log

from .helpers import make_tenant, wait_until


def test_namespace_state_with_and_without_the_right_to_read_namespaces(k8s_cluster):
    tenant = make_tenant(k8s_cluster, "queries")
    api = connect(tenant.kubeconfig)
    # a namespaced Role cannot read namespaces: the dry-run create of a Secret tells
    assert namespace_state(api, tenant.namespace) is NamespaceState.EXISTS_BY_DRY_RUN
    other = k8s_cluster.create_namespace("queries-other")
    assert namespace_state(api, other) is NamespaceState.UNKNOWN  # no rights there at all
    admin = connect(k8s_cluster.kubeconfig)
    assert namespace_state(admin, tenant.namespace) is NamespaceState.EXISTS
    assert namespace_state(admin, "kubemagic-nowhere") is NamespaceState.MISSING
    stored = admin.request("GET", namespaced(tenant.namespace, "secrets"))["items"]
    assert not [s for s in stored if s["metadata"]["name"].startswith("kubemagic-check-")]


def test_pod_log_tail_and_undecodable_bytes(k8s_cluster):
    ns = k8s_cluster.create_namespace("podlog")
    api = connect(k8s_cluster.kubeconfig)
    script = "import sys; sys.stdout.buffer.write(b'one\\ntwo \\xff\\nthree\\n')"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "printer"},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "containers": [
                {"name": "main", "image": k8s_cluster.image, "command": ["python", "-c", script]}
            ],
        },
    }
    api.request("POST", namespaced(ns, "pods"), body=pod)

    def phase() -> str:
        status = api.request("GET", namespaced(ns, "pods", "printer"))["status"]
        return status.get("phase") if status.get("phase") in ("Succeeded", "Failed") else ""

    assert wait_until(phase, 120, interval=0.5) == "Succeeded"
    assert pod_log(api, ns, "printer", "main") == "one\ntwo \ufffd\nthree\n"
    assert pod_log(api, ns, "printer", "main", tail_lines=1) == "three\n"
    with pytest.raises(ApiException) as e:
        pod_log(api, ns, "no-such-pod", "main")
    assert e.value.status == 404
