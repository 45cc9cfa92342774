"""The test hub's own Kubernetes identity: namespace, ServiceAccount, ClusterRole, binding, token.

``python -m tests.hub.hub_rbac`` prints them as YAML (tests/hub/up applies it as cluster admin).

The hub is not cluster-admin. Its ClusterRole has what KubeSpawner needs with per-user namespaces
(create namespaces; pods and events in them, watched across namespaces by one reflector) and what
the pre_spawn_hook needs to set a user's namespace up (server-side apply of the ServiceAccount,
Role, RoleBinding, ResourceQuota, LimitRange and NetworkPolicies of user_namespace.py). Kubernetes
lets an account create a Role only with rights it holds itself (no ``escalate``/``bind`` verbs
here), so the ClusterRole also carries the rules of the Role ``kubemagic rbac`` prints, taken from
that command's output, not copied.
"""

from __future__ import annotations

import sys

import yaml

from tests.hub.user_namespace import rbac_objects

HUB_NAMESPACE = "jhub"
HUB_SERVICE_ACCOUNT = "jupyterhub"
CLUSTER_ROLE = "kubemagic-test-hub"
TOKEN_SECRET = "jupyterhub-token"
LABELS = {"app.kubernetes.io/managed-by": "kubemagic-test-hub"}

APPLY = ["get", "create", "patch"]  # server-side apply
HUB_RULES = [
    # KubeSpawner: user namespaces (enable_user_namespaces), the user's pod, its events
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": APPLY},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "create", "delete"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]},
    # pre_spawn_hook: what it applies in the user's namespace
    {"apiGroups": [""], "resources": ["serviceaccounts", "resourcequotas", "limitranges"], "verbs": APPLY},
    {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": APPLY},
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": APPLY},
]


def hub_objects(kubemagic_rules: list[dict]) -> list[dict]:
    meta = lambda name, ns=None: {"name": name, **({"namespace": ns} if ns else {}), "labels": dict(LABELS)}  # noqa: E731
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": meta(HUB_NAMESPACE)},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(HUB_SERVICE_ACCOUNT, HUB_NAMESPACE)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta(CLUSTER_ROLE),
         "rules": HUB_RULES + kubemagic_rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": meta(CLUSTER_ROLE),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CLUSTER_ROLE},
         "subjects": [{"kind": "ServiceAccount", "name": HUB_SERVICE_ACCOUNT, "namespace": HUB_NAMESPACE}]},
        # a long-lived token for the hub's kubeconfig (deleted with the namespace by tests/hub/down)
        {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
         "metadata": {**meta(TOKEN_SECRET, HUB_NAMESPACE),
                      "annotations": {"kubernetes.io/service-account.name": HUB_SERVICE_ACCOUNT}}},
    ]


def kubemagic_role_rules() -> list[dict]:
    role = [d for d in rbac_objects("kubemagic-rules", "kubemagic", python=sys.executable) if d["kind"] == "Role"]
    assert len(role) == 1, "kubemagic rbac printed no Role"
    return role[0]["rules"]


if __name__ == "__main__":
    print(yaml.safe_dump_all(hub_objects(kubemagic_role_rules()), sort_keys=False))
