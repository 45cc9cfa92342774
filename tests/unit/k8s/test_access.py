"""RBAC rendering, permission matching, API error translation, and "where am I" detection."""

from __future__ import annotations

import json
import socket

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from kubemagic.errors import PermissionDenied, StartupError, UsageError
from kubemagic.k8s import incluster
from kubemagic.k8s.client import api_call, permission_denied, service_account_of
from kubemagic.k8s.role import DIAGNOSTIC_RULES, ROLE_RULES
from kubemagic.k8s.permissions import missing_permissions
from kubemagic.k8s.rbac import main_rbac, render_rbac


def test_render_rbac_is_applyable_yaml():
    docs = list(yaml.safe_load_all(render_rbac("team-a", "alice-sa")))
    kinds = [d["kind"] for d in docs]
    assert kinds == ["ServiceAccount", "Role", "RoleBinding", "NetworkPolicy"]
    assert all(d["metadata"]["namespace"] == "team-a" for d in docs)
    assert docs[1]["rules"] == ROLE_RULES + DIAGNOSTIC_RULES
    assert docs[2]["subjects"] == [
        {"kind": "ServiceAccount", "name": "alice-sa", "namespace": "team-a"}
    ]


def test_render_rbac_options():
    docs = list(
        yaml.safe_load_all(
            render_rbac("eng", "kernel", network_policy=False, service_account_namespace="hub")
        )
    )
    assert [d["kind"] for d in docs] == ["Role", "RoleBinding"]
    assert docs[1]["subjects"][0]["namespace"] == "hub"


def test_main_rbac_prints(capsys):
    assert (
        main_rbac(["--namespace", "x", "--service-account", "s", "--port-range", "48000-48100"])
        == 0
    )
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert docs[-1]["spec"]["ingress"][0]["ports"][0] == {
        "protocol": "TCP",
        "port": 48000,
        "endPort": 48100,
    }


def test_role_rules_grant_everything_needed():
    assert missing_permissions(ROLE_RULES) == []


def test_missing_permissions_named():
    granted = [r for r in ROLE_RULES if r["resources"] != ["secrets"]]
    assert missing_permissions(granted) == [
        ("create", "secrets"),
        ("patch", "secrets"),
        ("delete", "secrets"),
    ]
    assert ("create", "jobs.batch") in missing_permissions([])


def test_wildcards_and_resource_names():
    assert missing_permissions([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]) == []
    named = [{**r, "resourceNames": ["x"]} for r in ROLE_RULES]
    assert len(missing_permissions(named)) == len(missing_permissions([]))
    assert (
        missing_permissions(
            [{"apiGroups": [""], "resources": ["pods/*"], "verbs": ["get"]}],
            [{"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}],
        )
        == []
    )


def _api_error(status, message):
    e = ApiException(status=status, reason="x")
    e.body = json.dumps({"kind": "Status", "message": message})
    return e


def test_403_names_verb_resource_namespace_and_rbac_command():
    msg = (
        'jobs.batch is forbidden: User "system:serviceaccount:team-a:alice" cannot create '
        'resource "jobs" in API group "batch" in the namespace "team-a"'
    )
    with pytest.raises(PermissionDenied) as e:
        with api_call("create", "jobs.batch", "team-a"):
            raise _api_error(403, msg)
    text = str(e.value)
    assert "may not create jobs.batch in namespace 'team-a'" in text
    assert "kubemagic rbac --namespace team-a --service-account alice" in e.value.fix


def test_permission_denied_for_account_of_another_namespace():
    err = permission_denied([("list", "events")], "eng", user="system:serviceaccount:hub:k")
    assert "--service-account k --service-account-namespace hub" in err.fix


def test_missing_namespace_and_invalid_object():
    with pytest.raises(UsageError, match="namespace 'nope' does not exist"):
        with api_call("create", "secrets", "nope"):
            raise _api_error(404, 'namespaces "nope" not found')
    with pytest.raises(UsageError, match="refused to create jobs.batch.*spec.template"):
        with api_call("create", "jobs.batch", "ns"):
            raise _api_error(422, "Job.batch is invalid: spec.template: bad")
    with pytest.raises(ApiException):
        with api_call("delete", "secrets", "ns"):
            raise _api_error(404, 'secrets "x" not found')


def test_unreachable_api_is_a_startup_error():
    import urllib3

    with pytest.raises(StartupError, match="cannot reach the Kubernetes API to list pods"):
        with api_call("list", "pods", "ns"):
            raise urllib3.exceptions.MaxRetryError(None, "https://10.255.255.1:6443", "refused")


def _kubeconfig(tmp_path, server, namespace=None):
    ctx = {"cluster": "c", "user": "u"}
    if namespace:
        ctx["namespace"] = namespace
    path = tmp_path / "config"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "ctx",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "ctx", "context": ctx}],
            }
        )
    )
    return str(path)


def test_config_available_needs_a_listening_server(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        monkeypatch.setenv("KUBECONFIG", _kubeconfig(tmp_path, f"https://127.0.0.1:{port}", "team"))
        assert incluster.kubernetes_config_available() is True
        assert incluster.default_namespace() == "team"
    # nothing listens there any more: a stale kubeconfig means "no cluster"
    assert incluster.kubernetes_config_available() is False
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    assert incluster.kubernetes_config_available() is False
    assert incluster.default_namespace() == "default"
    (tmp_path / "garbage").write_text("{{{")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "garbage"))
    assert incluster.kubernetes_config_available() is False


def test_outside_a_pod_there_is_no_pod(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert not incluster.in_cluster()
    assert incluster.pod_name() is None and incluster.pod_ip() is None


def test_controller_address_detection_is_not_loopback(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", _kubeconfig(tmp_path, "https://127.0.0.1:6443"))
    address = incluster.detect_controller_address()
    assert address and not incluster.is_loopback(address)


def test_loopback_detection():
    assert incluster.is_loopback("") and incluster.is_loopback("127.0.0.1")
    assert incluster.is_loopback("localhost") and incluster.is_loopback("::1")
    assert incluster.is_loopback("127.0.1.1")
    assert not incluster.is_loopback("10.88.0.1")


def test_names_under_localhost_are_loopback_whatever_the_resolver_says():
    for name in ("LOCALHOST", "localhost.", "kernel.localhost"):
        assert incluster.is_loopback(name)


def test_a_name_this_machine_cannot_resolve_is_not_loopback():
    """Cluster DNS may know it (a Service name): refusing it would block a working setup."""
    assert not incluster.is_loopback("no-such-host.invalid")


def test_a_name_is_loopback_only_if_all_its_addresses_are(monkeypatch):
    answers = {"hostname": ["127.0.1.1"], "both": ["127.0.0.1", "10.0.0.5"], "v6": ["::1"]}

    def resolve(host, *args, **kwargs):  # this machine's resolver, with fixed answers
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0)) for a in answers[host]]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    assert incluster.is_loopback("hostname") and incluster.is_loopback("v6")
    assert not incluster.is_loopback("both")


def test_controller_address_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", _kubeconfig(tmp_path, "https://127.0.0.1:6443"))
    monkeypatch.setenv(incluster.CONTROLLER_ADDRESS_ENV, "10.0.0.7")
    assert incluster.controller_address("10.0.0.5") == "10.0.0.5"  # --controller-address
    assert incluster.controller_address() == "10.0.0.7"
    monkeypatch.delenv(incluster.CONTROLLER_ADDRESS_ENV)
    assert incluster.controller_address() == incluster.detect_controller_address()


def test_service_account_of():
    assert service_account_of("system:serviceaccount:team-a:alice") == ("team-a", "alice")
    assert service_account_of("alice@uni.edu") is None and service_account_of(None) is None


def test_image_of_pod_prefers_notebook_container(monkeypatch):
    pod = {
        "spec": {
            "containers": [{"name": "proxy", "image": "p"}, {"name": "notebook", "image": "nb:1"}]
        }
    }
    assert incluster.image_of_pod(pod) == "nb:1"
    assert incluster.image_of_pod({"spec": {"containers": [{"name": "x", "image": "i"}]}}) == "i"
    monkeypatch.setenv("JUPYTER_IMAGE_SPEC", "hub/img:2")
    assert incluster.image_from_env() == "hub/img:2"


def test_owner_user(monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_USER", "alice@uni.edu")
    assert incluster.owner_user() == "alice@uni.edu"
