"""Check up front that the backend may do everything it will do, in one API request.

Without this a missing permission surfaces halfway — a Secret created, then a 403 on
the Job, or a watch that silently never sees a pod. A SelfSubjectRulesReview (allowed
for every authenticated user) lists what we may do in the namespace; comparing it with
:data:`~kubemagic.k8s.role.ROLE_RULES` names *all* missing permissions at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .client import Api, api_call, permission_denied
from .role import ROLE_RULES


def needed_permissions(rules: Iterable[dict[str, Any]] = ROLE_RULES) -> list[tuple[str, str, str]]:
    """``(api group, resource, verb)`` triples the backend uses."""
    return [
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    ]


def _covers(rule: dict[str, Any], group: str, resource: str, verb: str) -> bool:
    if rule.get("resourceNames"):
        return False  # a rule limited to named objects cannot cover create/list/watch
    groups = rule.get("apiGroups") or [""]
    resources = rule.get("resources") or []
    verbs = rule.get("verbs") or []
    base, _, sub = resource.partition("/")
    resource_ok = (
        resource in resources
        or "*" in resources
        or (sub and (f"{base}/*" in resources or f"*/{sub}" in resources))
    )
    return (
        (group in groups or "*" in groups) and bool(resource_ok) and (verb in verbs or "*" in verbs)
    )


def missing_permissions(
    granted: Iterable[dict[str, Any]], needed: Iterable[dict[str, Any]] = ROLE_RULES
) -> list[tuple[str, str]]:
    """``(verb, resource)`` pairs in ``needed`` that no rule in ``granted`` covers.

    ``granted`` uses the Role rule shape (``apiGroups``/``resources``/``verbs``/
    ``resourceNames``), as SelfSubjectRulesReview reports it.
    """
    granted = list(granted)
    return [
        (verb, resource if not group else f"{resource}.{group}")
        for group, resource, verb in needed_permissions(needed)
        if not any(_covers(rule, group, resource, verb) for rule in granted)
    ]


def check_permissions(api: Api, namespace: str) -> None:
    """Raise :class:`PermissionDenied` naming every permission the backend lacks.

    When the authorizer cannot enumerate rules (``incomplete``, e.g. a webhook
    authorizer), missing rules are not proof of a denial: the check then passes, and any
    real 403 is still translated where it happens.
    """
    with api_call("create", "selfsubjectrulesreviews.authorization.k8s.io"):
        review = api.request(
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
            body={
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectRulesReview",
                "spec": {"namespace": namespace},
            },
        )
    status = review.get("status") or {}
    missing = missing_permissions(status.get("resourceRules") or [])
    if missing and not status.get("incomplete"):
        raise permission_denied(missing, namespace, user=whoami(api))


def whoami(api: Api) -> str | None:
    """The user name the API sees us as (``system:serviceaccount:ns:name`` for pods), for
    naming the service account in the fix of a permission error. None if unknown."""
    try:
        review = api.request(
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
            timeout=5,
        )
        return review["status"]["userInfo"]["username"]
    except Exception:
        return None
