"""Which NetworkPolicies keep engine pods from the controller: pure, for diagnoses.

When engines cannot connect, "a NetworkPolicy blocks it" is only useful with the policy's
name and the rule to add. Kubernetes' semantics, applied here to the policies of one
namespace: a pod selected by at least one policy of a direction (Ingress or Egress) is
isolated in that direction, and a connection is allowed only if some rule of those
policies admits it; policies add up, they never subtract.

Only what can be decided from the policies and labels is decided: ``namespaceSelector``
peers are taken to match (the namespace's labels are not read), ``ipBlock`` peers are
matched against the given address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Endpoint:
    """One side of a connection: a pod's labels and IP (labels None: not a pod here)."""

    labels: Mapping[str, str] | None
    ip: str


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector matching (matchLabels and matchExpressions)."""
    selector = selector or {}
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def _types(policy: Mapping[str, Any]) -> list[str]:
    spec = policy.get("spec") or {}
    if spec.get("policyTypes"):
        return list(spec["policyTypes"])
    return ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]


def _port_ok(ports: list[Mapping[str, Any]] | None, port: int) -> bool:
    if not ports:
        return True
    for p in ports:
        if (p.get("protocol") or "TCP") != "TCP":
            continue
        start = p.get("port")
        if start is None:
            return True
        if not isinstance(start, int):  # a named port: cannot tell, assume it matches
            return True
        if start <= port <= (p.get("endPort") or start):
            return True
    return False


def _peer_ok(peers: list[Mapping[str, Any]] | None, other: Endpoint) -> bool:
    if not peers:
        return True
    for peer in peers:
        block = peer.get("ipBlock")
        if block:
            try:
                ip = ipaddress.ip_address(other.ip)
                if ip in ipaddress.ip_network(block["cidr"], strict=False) and not any(
                        ip in ipaddress.ip_network(e, strict=False)
                        for e in block.get("except") or []):
                    return True
            except ValueError:
                continue
            continue
        if other.labels is None:
            continue
        if "podSelector" in peer and not selects(peer["podSelector"], other.labels):
            continue
        return True  # podSelector matched, or a namespaceSelector (taken to match)
    return False


def blocking(policies: Iterable[Mapping[str, Any]], direction: str, pod: Endpoint,
             other: Endpoint, port: int) -> list[str]:
    """Names of the policies that isolate ``pod`` in ``direction`` ("Ingress": ``other``
    connects to ``pod``; "Egress": ``pod`` connects to ``other``) when none of their rules
    admits the connection on TCP ``port``; an empty list when it is allowed."""
    if pod.labels is None:
        return []
    key, peer_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    isolating = []
    for policy in policies:
        spec = policy.get("spec") or {}
        if direction not in _types(policy) or not selects(spec.get("podSelector"), pod.labels):
            continue
        isolating.append(policy["metadata"]["name"])
        for rule in spec.get(key) or []:
            if _port_ok(rule.get("ports"), port) and _peer_ok(rule.get(peer_key), other):
                return []
    return isolating


def explain_block(policies: list[Mapping[str, Any]], engine: Endpoint, controller: Endpoint,
                  port: int) -> str | None:
    """One sentence naming the policies that stop ``engine`` reaching ``controller:port``."""
    parts = []
    ingress = blocking(policies, "Ingress", controller, engine, port)
    if ingress:
        parts.append(f"NetworkPolicy {', '.join(ingress)} isolates the kernel's pod for "
                     f"ingress and none of its rules admits engine pods on TCP {port}")
    egress = blocking(policies, "Egress", engine, controller, port)
    if egress:
        parts.append(f"NetworkPolicy {', '.join(egress)} isolates engine pods for egress "
                     f"and none of its rules admits {controller.ip}:{port}")
    return "; ".join(parts) or None
