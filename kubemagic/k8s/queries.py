"""Read-only questions several parts of kubemagic ask the API: does a namespace exist, and
what did a pod's container print.

One answer each, so the backend's start-up check, ``kubemagic doctor`` and the launcher's
diagnostics cannot disagree about them (a namespaced service account, for one, may not
read namespaces at all, and every caller must handle that the same way).
"""

from __future__ import annotations

import enum

from kubernetes.client.exceptions import ApiException

from .client import Api, api_call, namespaced


class NamespaceState(enum.Enum):
    """What the API tells about a namespace; the values are the doctor's wording."""

    EXISTS = "exists"
    EXISTS_BY_DRY_RUN = "exists (checked with a dry-run create)"
    MISSING = "does not exist"
    UNKNOWN = "cannot tell: may neither read it nor create Secrets in it"


def namespace_state(api: Api, namespace: str) -> NamespaceState:
    """Does ``namespace`` exist?

    Reading a namespace is cluster-scoped, which a namespaced service account usually may
    not do. Then a dry-run create of a Secret — which the Role of ``kubemagic rbac``
    grants — tells: 404 means no such namespace, success means it exists (nothing is
    stored). When that is forbidden too, the answer is UNKNOWN and a permission check
    must speak for the namespace. Other API errors propagate as :class:`ApiException`;
    callers wrap this in :func:`.client.api_call` to translate an unreachable server.
    """
    try:
        api.request("GET", f"/api/v1/namespaces/{namespace}")
        return NamespaceState.EXISTS
    except ApiException as e:
        if e.status == 404:
            return NamespaceState.MISSING
        if e.status != 403:
            raise
    probe = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"generateName": "kubemagic-check-"},
        "type": "Opaque",
    }
    try:
        api.request("POST", namespaced(namespace, "secrets"), query={"dryRun": "All"}, body=probe)
        return NamespaceState.EXISTS_BY_DRY_RUN
    except ApiException as e:
        if e.status == 404:
            return NamespaceState.MISSING
        if e.status == 403:
            return NamespaceState.UNKNOWN
        raise


def pod_log(
    api: Api,
    namespace: str,
    pod: str,
    container: str,
    tail_lines: int | None = None,
    limit_bytes: int | None = None,
) -> str:
    """The log of ``container`` in ``pod`` (its last ``tail_lines`` lines, its first
    ``limit_bytes`` bytes, or all of it), decoded leniently: an engine's output may hold
    any bytes.

    Raises like :func:`.client.api_call` (:class:`~kubemagic.errors.PermissionDenied`
    without ``pods/log``), or :class:`ApiException` — e.g. 400 while the container is
    still being created, 404 once the pod is gone; callers decide what a missing log means.
    """
    with api_call("get", "pods/log", namespace):
        response = api.request(
            "GET",
            namespaced(namespace, "pods", f"{pod}/log"),
            query={"container": container, "tailLines": tail_lines, "limitBytes": limit_bytes},
            raw=True,  # plain text, not JSON
        )
    try:
        return bytes(response.data).decode("utf8", "replace")
    finally:
        response.release_conn()
