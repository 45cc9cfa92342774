"""What the test hub puts into a user's namespace (user_namespace.py), and the hub's own rights.

Without the cluster: the objects come from their sources (`kubemagic rbac`, the guide's files),
and the NetworkPolicies admit and refuse what they should, evaluated with kubemagic's own
NetworkPolicy semantics (kubemagic.k8s.netpol). With the hub: its ServiceAccount is not
cluster-admin, and a user namespace holds exactly the rendered objects.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.hub import user_namespace as un

NS, USER, HOST = "jhub-alice", "alice", "10.88.0.1"


@pytest.fixture(scope="module")
def objects():
    return un.user_objects(NS, USER, HOST)


def _by_kind(objects, kind, name=None):
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, [o["metadata"]["name"] for o in found])
    return found[0]


def test_rbac_is_what_kubemagic_rbac_prints(objects):
    printed = subprocess.run([sys.executable, "-m", "kubemagic", "rbac", "--namespace", NS,
                              "--service-account", "kubemagic"], capture_output=True, text=True, check=True).stdout
    printed_docs = [d for d in yaml.safe_load_all(printed) if d]
    assert printed_docs and all(d in objects for d in printed_docs)
    assert objects[0] == {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": NS, "labels": {**un.NAMESPACE_LABELS, "hub.jupyter.org/username": USER}}}
    assert {o["metadata"]["namespace"] for o in objects[1:]} == {NS}


def test_singleuser_policy_is_z2jh_plus_the_guides_values(objects):
    values = yaml.safe_load(un.VALUES_FILE.read_text())
    policy = _by_kind(objects, "NetworkPolicy", "singleuser")
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": {"component": "singleuser-server"}}
    # the guide's rules, as given, after z2jh's own
    assert spec["ingress"][1:] == values["singleuser"]["networkPolicy"]["ingress"]
    assert spec["egress"][-len(values["singleuser"]["networkPolicy"]["egress"]):] == \
        values["singleuser"]["networkPolicy"]["egress"]
    # z2jh: no blanket rule for private IPs (the guide keeps privateIPs: false)
    assert values["singleuser"]["networkPolicy"]["egressAllowRules"]["privateIPs"] is False
    for rule in spec["egress"]:
        for peer in rule.get("to") or []:
            if "ipBlock" in peer and peer["ipBlock"]["cidr"] == "0.0.0.0/0":
                assert set(un.PRIVATE_IPS) <= set(peer["ipBlock"]["except"])
    assert _by_kind(objects, "NetworkPolicy", "kubemagic-engines") == un.engine_policy(NS)


SINGLEUSER = {"component": "singleuser-server", "app": "jupyterhub"}
ENGINE = {"app.kubernetes.io/name": "kubemagic", "app.kubernetes.io/component": "engine"}
OTHER = {"app": "something-else"}


@pytest.mark.parametrize("direction,pod,other,port,allowed", [
    # singleuser pod: out to the hub API, the proxy, the API server (the guide's rule), the internet
    ("Egress", SINGLEUSER, (None, HOST), 8081, True),
    ("Egress", SINGLEUSER, (None, HOST), 8000, True),
    ("Egress", SINGLEUSER, (None, HOST), 6443, True),
    ("Egress", SINGLEUSER, (None, "93.184.216.34"), 443, True),
    # ... but not to other private addresses, other pods, the host's other ports, cloud metadata
    ("Egress", SINGLEUSER, (None, HOST), 22, False),
    ("Egress", SINGLEUSER, (OTHER, "10.88.0.50"), 8888, False),
    ("Egress", SINGLEUSER, (None, "10.1.2.3"), 443, False),
    ("Egress", SINGLEUSER, (None, "192.168.1.1"), 80, False),
    ("Egress", SINGLEUSER, (None, "169.254.169.254"), 80, False),
    # singleuser pod: in from the hub/proxy (the host) on 8888, from engines on the controller ports
    ("Ingress", SINGLEUSER, (None, HOST), 8888, True),
    ("Ingress", SINGLEUSER, (ENGINE, "10.88.0.60"), 29100, True),
    ("Ingress", SINGLEUSER, (ENGINE, "10.88.0.60"), 29199, True),
    ("Ingress", SINGLEUSER, (ENGINE, "10.88.0.60"), 8888, False),
    ("Ingress", SINGLEUSER, (OTHER, "10.88.0.50"), 29100, False),
    ("Ingress", SINGLEUSER, (OTHER, "10.88.0.50"), 8888, False),
    # engines: out only to the controller's ports on singleuser pods
    ("Egress", ENGINE, (SINGLEUSER, "10.88.0.10"), 29150, True),
    ("Egress", ENGINE, (SINGLEUSER, "10.88.0.10"), 8888, False),
    ("Egress", ENGINE, (OTHER, "10.88.0.50"), 29150, False),
    ("Egress", ENGINE, (None, HOST), 6443, False),
    ("Egress", ENGINE, (None, HOST), 8081, False),
    ("Egress", ENGINE, (None, "93.184.216.34"), 443, False),
    ("Egress", ENGINE, (None, "169.254.169.254"), 80, False),
    # engines accept nothing
    ("Ingress", ENGINE, (SINGLEUSER, "10.88.0.10"), 29100, False),
    ("Ingress", ENGINE, (None, HOST), 22, False),
])
def test_policies_admit_and_refuse(objects, direction, pod, other, port, allowed):
    from kubemagic.k8s.netpol import Endpoint, blocking

    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    blocked = blocking(policies, direction, Endpoint(pod, "10.88.0.10" if pod is SINGLEUSER else "10.88.0.60"),
                       Endpoint(*other), port)
    assert (not blocked) == allowed, (direction, pod, other, port, blocked)


def test_quota_leaves_room_for_a_few_engines(objects):
    quota = _by_kind(objects, "ResourceQuota")["spec"]["hard"]
    assert int(quota["pods"]) >= 5
    limits = _by_kind(objects, "LimitRange")["spec"]["limits"][0]
    assert limits["type"] == "Container" and limits["defaultRequest"]["cpu"] and limits["default"]["memory"]


def test_kubespawner_settings_come_from_the_guides_values():
    values = yaml.safe_load(un.VALUES_FILE.read_text())
    settings = un.kubespawner_settings(values)
    assert settings["service_account"] == values["singleuser"]["serviceAccountName"] == "kubemagic"
    assert settings["environment"] == values["singleuser"]["extraEnv"]
    assert settings["automount_service_account_token"] is True


# ------------------------------------------------------------------ on the running hub
def _can(api, verb, resource, namespace=None, group=""):
    from kubernetes import client

    review = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(
        resource_attributes=client.V1ResourceAttributes(verb=verb, resource=resource, group=group,
                                                        namespace=namespace)))
    return client.AuthorizationV1Api(api).create_self_subject_access_review(review).status.allowed


@pytest.mark.cluster
def test_the_hub_account_is_not_cluster_admin(hub, k8s_cluster):
    from kubernetes import config

    from tests.hub.conftest import STATE

    api = config.new_client_from_config(config_file=str(STATE / "hub" / "hub.kubeconfig"))
    try:
        # what KubeSpawner and the namespace setup need
        assert _can(api, "create", "namespaces")
        assert _can(api, "create", "pods", "jhub-someone")
        assert _can(api, "watch", "pods")
        assert _can(api, "create", "roles", "jhub-someone", "rbac.authorization.k8s.io")
        # and no more: no reading Secrets, no cluster-wide RBAC, no escalation, no exec, no nodes
        assert not _can(api, "get", "secrets", "kube-system")
        assert not _can(api, "list", "secrets")
        assert not _can(api, "create", "clusterrolebindings", group="rbac.authorization.k8s.io")
        assert not _can(api, "escalate", "roles", "jhub-someone", "rbac.authorization.k8s.io")
        assert not _can(api, "bind", "clusterroles", group="rbac.authorization.k8s.io")
        assert not _can(api, "create", "pods/exec", "jhub-someone")
        assert not _can(api, "delete", "namespaces")
        assert not _can(api, "patch", "nodes")
    finally:
        api.close()
