"""``kubemagic rbac``: the least-privilege RBAC (and NetworkPolicy) the backend needs, as YAML.

An admin pipes it into ``kubectl apply -f -`` once per namespace. The Role holds exactly
:data:`~kubemagic.k8s.role.ROLE_RULES` — the calls the backend makes, nothing more —
so "kubemagic needs cluster-admin" is never the answer to a 403. The objects around the
Role — ServiceAccount, RoleBinding, NetworkPolicy — are built here (pure dicts): only an
admin ever applies them, kubemagic itself never creates them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any

import yaml

from .manifests import ENGINE_POD_SELECTOR, LABEL_MANAGED_BY, LABEL_NAME, SINGLEUSER_POD_LABELS
from .options import DEFAULT_PORT_RANGE, parse_port_range
from .role import role


def render_rbac(
    namespace: str,
    service_account: str = "kubemagic",
    network_policy: bool = True,
    *,
    service_account_namespace: str | None = None,
    port_range: str = DEFAULT_PORT_RANGE,
) -> str:
    """Multi-document YAML: ServiceAccount, Role, RoleBinding and, optionally, the
    NetworkPolicy letting engine pods reach the controller's ports.

    ``service_account_namespace`` binds an account living elsewhere (a kernel in one
    namespace starting engines in another); the ServiceAccount is then not emitted.
    """
    sa_namespace = service_account_namespace or namespace
    docs = []
    if sa_namespace == namespace:
        docs.append(service_account_manifest(service_account, namespace))
    docs.append(role("kubemagic", namespace))
    docs.append(role_binding("kubemagic", namespace, service_account, sa_namespace))
    if network_policy:
        docs.append(engines_network_policy(namespace, parse_port_range(port_range)))
    header = (
        f"# kubemagic: least-privilege access for service account {sa_namespace}/"
        f"{service_account} in namespace {namespace}\n"
    )
    return header + yaml.safe_dump_all(docs, sort_keys=False, explicit_start=True)


def main_rbac(argv: list[str] | None = None) -> int:
    """``kubemagic rbac [--namespace NS] [--service-account NAME] ...``: print the YAML."""
    parser = argparse.ArgumentParser(
        prog="kubemagic rbac",
        description="Print the ServiceAccount, Role, RoleBinding (and NetworkPolicy) kubemagic "
        "needs, for `kubectl apply -f -`.",
    )
    parser.add_argument("--namespace", "-n", default="default", help="namespace of the engines")
    parser.add_argument("--service-account", default="kubemagic", help="account the kernel runs as")
    parser.add_argument(
        "--service-account-namespace",
        default=None,
        help="namespace of that account, if not --namespace",
    )
    parser.add_argument(
        "--port-range",
        default=DEFAULT_PORT_RANGE,
        help="controller ports the NetworkPolicy opens to engine pods",
    )
    parser.add_argument(
        "--no-network-policy", action="store_true", help="leave out the NetworkPolicy"
    )
    args = parser.parse_args(argv)
    sys.stdout.write(
        render_rbac(
            args.namespace,
            args.service_account,
            network_policy=not args.no_network_policy,
            service_account_namespace=args.service_account_namespace,
            port_range=args.port_range,
        )
    )
    return 0


def engines_network_policy(
    namespace: str,
    port_range: tuple[int, int],
    controller_pod_labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Let engine pods reach the controller's port range on the kernel's pod.

    JupyterHub's singleuser NetworkPolicy admits ingress to the kernel's pod only from the
    hub and proxy, so engines could not register. This policy adds exactly one allowance:
    TCP ``port_range`` from pods labelled as kubemagic engines. Engines' egress is left
    alone — user code on them may need the network.
    """
    low, high = port_range
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": "kubemagic-engines-to-controller",
            "namespace": namespace,
            "labels": {LABEL_NAME: "kubemagic", LABEL_MANAGED_BY: "kubemagic"},
        },
        "spec": {
            "podSelector": {"matchLabels": dict(controller_pod_labels or SINGLEUSER_POD_LABELS)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": dict(ENGINE_POD_SELECTOR)}}],
                    "ports": [{"protocol": "TCP", "port": low, "endPort": high}],
                }
            ],
        },
    }


def service_account_manifest(name: str, namespace: str) -> dict[str, Any]:
    """The service account the kernel (the backend) runs as."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": namespace},
    }


def role_binding(
    name: str,
    namespace: str,
    service_account_name: str,
    service_account_namespace: str | None = None,
) -> dict[str, Any]:
    """Binds :func:`.role.role` ``name`` to the service account, which may live in
    another namespace (a kernel in one namespace starting engines in another)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [
            {
                "kind": "ServiceAccount",
                "name": service_account_name,
                "namespace": service_account_namespace or namespace,
            }
        ],
    }
