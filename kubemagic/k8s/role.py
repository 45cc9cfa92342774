"""The backend's Role: exactly the API calls kubemagic makes in a namespace.

Its rules are the backend's contract: ``kubemagic rbac`` prints them (:mod:`.rbac`), a
session checks them at start-up (:mod:`.permissions`), ``kubemagic doctor`` and the tests
run the backend under them. Apart from the engine objects (:mod:`.manifests`) because only
an admin applies the Role; kubemagic itself never creates it.
"""

from __future__ import annotations

import copy
from typing import Any

#: Exactly the API calls the backend makes, in one namespace. ``kubemagic rbac`` prints
#: these; ``tests/k8s`` runs the backend under them. Secrets get no get/list: the engine
#: Secret is only ever written, and the service account cannot read other Secrets.
ROLE_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": ["batch"],
        "resources": ["jobs"],
        "verbs": ["create", "get", "list", "watch", "patch", "delete"],
    },
    # delete: KubernetesEngineSetLauncher.signal(SIGKILL) removes engine pods without grace
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "delete"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    # patch: an engine pod lost with its node is marked Failed, so the Job replaces it
    # (EngineControl.release_lost_pod; the pod garbage collector waits for the Node's deletion)
    {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]},
]

#: Read-only rules only ``kubemagic doctor`` uses (to name the NetworkPolicy that blocks
#: engines); part of the Role ``kubemagic rbac`` prints, but the backend never needs them,
#: so sessions do not check for them.
DIAGNOSTIC_RULES: list[dict[str, Any]] = [
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["list"]},
]


def role(name: str, namespace: str) -> dict[str, Any]:
    """The least-privilege Role: :data:`ROLE_RULES` in one namespace."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": namespace},
        "rules": copy.deepcopy(ROLE_RULES + DIAGNOSTIC_RULES),
    }
