"""What the test hub puts into each user's namespace before KubeSpawner starts the server.

Pure functions (dicts in, dicts out) plus the readers of their sources, so the hub
(tests/hub/jupyterhub_config.py, in the hub's venv) and the tests (in .venv) compute the same
objects. Sources, read at spawn time, never copied:

* ``kubemagic rbac --namespace NS --service-account SA`` — the real command of the repo's package:
  ServiceAccount, Role, RoleBinding and the engines-to-controller NetworkPolicy;
* ``docs/manifests/z2jh-values.yaml`` — the Helm values docs/jupyterhub.md tells an admin to add:
  the singleuser NetworkPolicy's extra ingress/egress and egressAllowRules, ``extraEnv``,
  ``extraFiles`` (kubemagic's admin config), the service account and ``hub.config.KubeSpawner``;
* ``docs/manifests/engine-networkpolicy.yaml`` — the engines' own NetworkPolicy from the guide.

The singleuser NetworkPolicy is z2jh's (jupyterhub/templates/singleuser/netpol.yaml and
_helpers-netpol.tpl, default values) with the hub and the proxy as host processes: they are
``ipBlock`` HOST_IP/32 instead of pods with the hub/proxy labels.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
VALUES_FILE = REPO / "docs" / "manifests" / "z2jh-values.yaml"
ENGINE_POLICY_FILE = REPO / "docs" / "manifests" / "engine-networkpolicy.yaml"

#: Labels of every namespace the test hub made (tests/hub/down deletes by them).
NAMESPACE_LABELS = {"app.kubernetes.io/managed-by": "kubemagic-test-hub"}
SINGLEUSER_PORT = 8888
HUB_PORT = 8081
PROXY_PORT = 8000
PRIVATE_IPS = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
CLOUD_METADATA_IP = "169.254.169.254"

#: z2jh's default singleuser.networkPolicy.egressAllowRules (jupyterhub/values.yaml)
Z2JH_EGRESS_ALLOW_RULES = {
    "cloudMetadataServer": False,
    "dnsPortsCloudMetadataServer": True,
    "dnsPortsKubeSystemNamespace": True,
    "dnsPortsPrivateIPs": True,
    "nonPrivateIPs": True,
    "privateIPs": False,
}

#: A few small engines and the notebook fit; the LimitRange gives containers without resources
#: (kubemagic's engines by default) requests and limits, which a quota on cpu/memory requires.
QUOTA = {"pods": "12", "requests.cpu": "2", "limits.cpu": "8", "requests.memory": "4Gi",
         "limits.memory": "8Gi"}
LIMIT_DEFAULT_REQUEST = {"cpu": "50m", "memory": "128Mi"}
LIMIT_DEFAULT = {"cpu": "1", "memory": "512Mi"}


def load_values(path: Path = VALUES_FILE) -> dict:
    return yaml.safe_load(path.read_text())


def rbac_objects(namespace: str, service_account: str, python: str | None = None) -> list[dict]:
    """What ``kubemagic rbac`` prints for this namespace, as dicts (runs the real command)."""
    python = python or os.environ.get("KUBEMAGIC_PYTHON") or sys.executable
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    res = subprocess.run([python, "-m", "kubemagic", "rbac", "--namespace", namespace,
                          "--service-account", service_account],
                         capture_output=True, text=True, env=env, cwd=str(REPO), timeout=60)
    if res.returncode:
        raise RuntimeError(f"kubemagic rbac failed ({res.returncode}): {res.stderr.strip()}")
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def egress_allow_rules(values: dict) -> list[dict]:
    """z2jh's jupyterhub.networkPolicy.renderEgressRules for the singleuser policy."""
    rules = dict(Z2JH_EGRESS_ALLOW_RULES)
    rules.update(values["singleuser"]["networkPolicy"].get("egressAllowRules") or {})
    out: list[dict] = []
    if rules["dnsPortsCloudMetadataServer"] or rules["dnsPortsKubeSystemNamespace"] or rules["dnsPortsPrivateIPs"]:
        to: list[dict] = []
        if rules["dnsPortsCloudMetadataServer"]:
            to.append({"ipBlock": {"cidr": f"{CLOUD_METADATA_IP}/32"}})
        if rules["dnsPortsKubeSystemNamespace"]:
            to.append({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}})
        if rules["dnsPortsPrivateIPs"]:
            to += [{"ipBlock": {"cidr": c}} for c in PRIVATE_IPS]
        out.append({"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}], "to": to})
    if rules["nonPrivateIPs"]:
        out.append({"to": [{"ipBlock": {"cidr": "0.0.0.0/0",
                                        "except": PRIVATE_IPS + [f"{CLOUD_METADATA_IP}/32"]}}]})
    if rules["privateIPs"]:
        out.append({"to": [{"ipBlock": {"cidr": c}} for c in PRIVATE_IPS]})
    if rules["cloudMetadataServer"]:
        out.append({"to": [{"ipBlock": {"cidr": f"{CLOUD_METADATA_IP}/32"}}]})
    return out


def singleuser_policy(namespace: str, values: dict, hub_ip: str) -> dict:
    """z2jh's singleuser NetworkPolicy with the guide's values, hub and proxy at hub_ip."""
    netpol = values["singleuser"]["networkPolicy"]
    host = [{"ipBlock": {"cidr": f"{hub_ip}/32"}}]
    ingress = [{"ports": [{"port": SINGLEUSER_PORT, "protocol": "TCP"}], "from": host}]  # hub, proxy
    ingress += copy.deepcopy(netpol.get("ingress") or [])
    egress = [
        {"to": host, "ports": [{"port": HUB_PORT, "protocol": "TCP"}]},     # singleuser -> hub API
        {"to": host, "ports": [{"port": PROXY_PORT, "protocol": "TCP"}]},   # singleuser -> proxy
    ]
    egress += egress_allow_rules(values)
    egress += copy.deepcopy(netpol.get("egress") or [])
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "singleuser", "namespace": namespace,
                     "labels": {"app": "jupyterhub", "component": "singleuser"}},
        "spec": {"podSelector": {"matchLabels": {"component": "singleuser-server"}},
                 "policyTypes": ["Ingress", "Egress"], "ingress": ingress, "egress": egress},
    }


def engine_policy(namespace: str, path: Path = ENGINE_POLICY_FILE) -> dict:
    doc = yaml.safe_load(path.read_text())
    doc["metadata"]["namespace"] = namespace
    return doc


def quota_objects(namespace: str) -> list[dict]:
    return [
        {"apiVersion": "v1", "kind": "ResourceQuota",
         "metadata": {"name": "user-quota", "namespace": namespace},
         "spec": {"hard": dict(QUOTA)}},
        {"apiVersion": "v1", "kind": "LimitRange",
         "metadata": {"name": "user-defaults", "namespace": namespace},
         "spec": {"limits": [{"type": "Container", "defaultRequest": dict(LIMIT_DEFAULT_REQUEST),
                              "default": dict(LIMIT_DEFAULT)}]}},
    ]


def extra_files_objects(namespace: str, values: dict) -> list[dict]:
    """z2jh's ``singleuser.extraFiles``: one Secret named ``singleuser`` holding the files."""
    files = values["singleuser"].get("extraFiles") or {}
    if not files:
        return []
    return [{"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
             "metadata": {"name": "singleuser", "namespace": namespace},
             "stringData": {key: f["stringData"] for key, f in files.items()}}]


def namespace_object(namespace: str, username: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": namespace, "labels": {**NAMESPACE_LABELS, "hub.jupyter.org/username": username}}}


def user_objects(namespace: str, username: str, hub_ip: str, values: dict | None = None,
                 rbac: list[dict] | None = None) -> list[dict]:
    """Everything for one user's namespace, the Namespace first."""
    values = values if values is not None else load_values()
    sa = values["singleuser"]["serviceAccountName"]
    rbac = rbac if rbac is not None else rbac_objects(namespace, sa)
    for doc in rbac:
        if doc["metadata"].get("namespace") != namespace:
            raise RuntimeError(f"kubemagic rbac rendered {doc['kind']} {doc['metadata'].get('name')} outside {namespace}")
    return [namespace_object(namespace, username), *rbac, *quota_objects(namespace),
            singleuser_policy(namespace, values, hub_ip), engine_policy(namespace),
            *extra_files_objects(namespace, values)]


def kubespawner_settings(values: dict) -> dict[str, Any]:
    """KubeSpawner traits the guide's values set: serviceAccountName, extraEnv, hub.config.KubeSpawner."""
    su = values["singleuser"]
    settings: dict[str, Any] = {"service_account": su["serviceAccountName"],
                                "environment": copy.deepcopy(su.get("extraEnv") or {})}
    files = su.get("extraFiles") or {}
    if files:  # mounted as z2jh mounts them: one secret volume, a subPath per file
        settings["volumes"] = [{"name": "files", "secret": {"secretName": "singleuser"}}]
        settings["volume_mounts"] = [{"name": "files", "mountPath": f["mountPath"], "subPath": key}
                                     for key, f in files.items()]
    settings.update(copy.deepcopy((values.get("hub") or {}).get("config", {}).get("KubeSpawner") or {}))
    return settings


if __name__ == "__main__":  # print one user's objects: python -m tests.hub.user_namespace NS USER
    ns, user = sys.argv[1], sys.argv[2]
    print(yaml.safe_dump_all(user_objects(ns, user, os.environ.get("HUB_IP", "10.88.0.1")), sort_keys=False))
