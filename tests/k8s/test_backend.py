"""``kubernetes_backend()`` against the real API: eager checks and least privilege.

Every error here happens before anything exists in the cluster, names what is wrong and
says how to fix it; the spec it returns starts working engines exactly as the session
uses it.
"""

from __future__ import annotations

import copy

import ipyparallel as ipp
import pytest
import yaml

from kubemagic.backends import ENGINE_INDEX_ENV
from kubemagic.errors import PermissionDenied, UsageError
from kubemagic.k8s import manifests as m
from kubemagic.k8s.backend import kubernetes_backend
from kubemagic.k8s.client import connect
from kubemagic.k8s.launcher import KubernetesEngineSetLauncher
from kubemagic.k8s.permissions import check_permissions
from kubemagic.k8s.role import role as role_of

from .helpers import (
    Tenant,
    kubectl_apply,
    leftovers,
    make_tenant,
    new_cluster,
    wait_until,
)

pytestmark = pytest.mark.cluster


@ipp.interactive  # pickled by value: engines cannot import the tests package
def _index():
    import os

    return int(os.environ["KUBEMAGIC_ENGINE_INDEX"])


def test_spec_starts_engines_the_way_the_session_does(k8s_cluster, tmp_path, loop, monkeypatch):
    tenant = make_tenant(k8s_cluster, "spec")
    monkeypatch.delenv("KUBEMAGIC_CONTROLLER_ADDRESS", raising=False)
    spec = kubernetes_backend(
        namespace=tenant.namespace,
        kubeconfig=tenant.kubeconfig,
        image=k8s_cluster.image,
        memory="256Mi",
        cpu="100m",
    )
    assert spec.name == "kubernetes"
    assert spec.engine_launcher_class is KubernetesEngineSetLauncher
    assert spec.controller_ip == "0.0.0.0"
    # detected: the address on the route to the API server (pods reach the node there)
    assert spec.controller_location == k8s_cluster.host_ip
    assert spec.curve is True and spec.default_retries >= 1
    (ports,) = spec.controller_args
    low, high = (int(p) for p in ports.split("=")[1].split("-"))
    assert 29100 <= low and high <= 29199 and high - low + 1 == 20

    monkeypatch.setenv("IPP_ENABLE_CURVE", "1")
    cluster = ipp.Cluster(
        controller_ip=spec.controller_ip,
        controller_location=spec.controller_location,
        controller_args=[
            "--IPController.use_threads=True",
            "--HeartMonitor.period=500",
            *spec.controller_args,
        ],
        engine_launcher_class=spec.engine_launcher_class,
        config=copy.deepcopy(spec.config),
        profile_dir=str(tmp_path / "profile"),
        shutdown_atexit=False,
    )
    try:
        loop.run(cluster.start_controller())
        loop.run(cluster.start_engines(1))
        rc = loop.run(cluster.connect_client())
        try:
            rc.wait_for_engines(1, timeout=spec.start_timeout)
            assert rc[:].apply_sync(_index) == [0]
            assert ENGINE_INDEX_ENV == m.INDEX_ENV
        finally:
            rc.close()
    finally:
        loop.run(cluster.stop_cluster(), timeout=120)
    assert leftovers(k8s_cluster, tenant.namespace) == {"jobs": [], "pods": [], "secrets": []}


def _tenant_without(k8s_cluster, prefix: str, resource: str, verb: str | None = None) -> Tenant:
    """A tenant whose Role lacks ``verb`` on ``resource`` (all verbs when None)."""
    tenant = make_tenant(k8s_cluster, prefix)
    role = role_of("kubemagic", tenant.namespace)
    for rule in role["rules"]:
        if rule["resources"] == [resource]:
            rule["verbs"] = [v for v in rule["verbs"] if verb is not None and v != verb]
    role["rules"] = [r for r in role["rules"] if r["verbs"]]
    kubectl_apply(k8s_cluster, yaml.safe_dump(role))
    api = connect(tenant.kubeconfig)

    def revoked() -> bool:  # RBAC changes reach the authorizer quickly, not instantly
        try:
            check_permissions(api, tenant.namespace)
        except PermissionDenied:
            return True
        return False

    assert wait_until(revoked, 30, interval=0.1)
    return tenant


def test_missing_permissions_are_all_named_up_front(k8s_cluster):
    tenant = _tenant_without(k8s_cluster, "nosecrets", "secrets")
    with pytest.raises(PermissionDenied) as e:
        kubernetes_backend(
            namespace=tenant.namespace,
            kubeconfig=tenant.kubeconfig,
            image=k8s_cluster.image,
            controller_address=k8s_cluster.host_ip,
        )
    text = str(e.value)
    assert "may not create secrets, patch secrets, delete secrets in namespace" in text
    assert f"system:serviceaccount:{tenant.namespace}:kubemagic" in text
    assert (
        f"kubemagic rbac --namespace {tenant.namespace} --service-account kubemagic" in e.value.fix
    )
    assert leftovers(k8s_cluster, tenant.namespace) == {"jobs": [], "pods": [], "secrets": []}


def test_a_403_mid_start_is_clear_and_leaves_nothing(k8s_cluster, tmp_path, loop):
    """Without the backend's up-front check (plain ipyparallel), the launcher's own 403."""
    tenant = _tenant_without(k8s_cluster, "nojobs", "jobs", "create")
    cluster = new_cluster(k8s_cluster, tenant, tmp_path)
    try:
        loop.run(cluster.start_controller())
        with pytest.raises(PermissionDenied) as e:
            loop.run(cluster.start_engines(1))
        assert f"may not create jobs.batch in namespace '{tenant.namespace}'" in str(e.value)
        assert "kubemagic rbac" in e.value.fix
    finally:
        loop.run(cluster.stop_cluster(), timeout=120)
    # the Secret created just before the refused Job was removed again
    assert leftovers(k8s_cluster, tenant.namespace) == {"jobs": [], "pods": [], "secrets": []}


def test_namespace_errors(k8s_cluster):
    with pytest.raises(UsageError, match="namespace 'kubemagic-nowhere' does not exist"):
        kubernetes_backend(
            namespace="kubemagic-nowhere",
            kubeconfig=k8s_cluster.kubeconfig,
            image=k8s_cluster.image,
            controller_address=k8s_cluster.host_ip,
        )
    tenant = make_tenant(k8s_cluster, "own")
    other = k8s_cluster.create_namespace("other")
    with pytest.raises(
        PermissionDenied, match=f"may not create jobs.batch.* in namespace '{other}'"
    ):
        kubernetes_backend(
            namespace=other,
            kubeconfig=tenant.kubeconfig,
            image=k8s_cluster.image,
            controller_address=k8s_cluster.host_ip,
        )


def test_bad_options_fail_before_the_cluster_is_touched(k8s_cluster, monkeypatch):
    tenant = make_tenant(k8s_cluster, "opts")
    common = dict(
        namespace=tenant.namespace,
        kubeconfig=tenant.kubeconfig,
        controller_address=k8s_cluster.host_ip,
    )
    with pytest.raises(UsageError, match="--memory '1XB'"):
        kubernetes_backend(memory="1XB", image="x", **common)
    with pytest.raises(UsageError, match="--cpu 'many'"):
        kubernetes_backend(cpu="many", image="x", **common)
    with pytest.raises(UsageError, match="priorityClassNme"):
        kubernetes_backend(image="x", pod_overrides={"priorityClassNme": "typo"}, **common)
    for var in ("JUPYTER_IMAGE_SPEC", "JUPYTER_IMAGE", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(UsageError, match="no engine image") as e:
        kubernetes_backend(**common)
    assert "--image" in e.value.fix
    with pytest.raises(UsageError, match="loopback"):
        kubernetes_backend(image="x", **{**common, "controller_address": "127.0.0.1"})
    assert leftovers(k8s_cluster, tenant.namespace) == {"jobs": [], "pods": [], "secrets": []}
