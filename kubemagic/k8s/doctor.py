"""``kubemagic doctor``: can the Kubernetes backend work here? One pass/fail table.

Checks, in order (a check whose prerequisite failed is shown as SKIP):

1. **API** — the API server answers (``/version``) with the kubeconfig / in-cluster config.
2. **namespace** — it exists.
3. **permissions** — every rule of the Role ``kubemagic rbac`` prints, verb by verb, by
   SelfSubjectAccessReview (the list is read from that Role, so it cannot drift).
4. **image** — a test Job's pod runs the engine image (so it exists and the node can pull
   it) and imports kubemagic and ipyparallel in it.
5. **controller ports** — that pod, labelled like an engine (so the NetworkPolicy for
   engines applies to it), opens TCP connections to listeners the doctor runs on the
   advertised controller address, at both ends of the controller port range.

1–3 are here; 4 and 5 run one pod (:mod:`.doctor_pod`). Exit code 0 when every check
passed, 1 otherwise. Every failure says how to fix it.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

import yaml
from kubernetes.client.exceptions import ApiException

from ..errors import KubemagicError
from . import incluster
from .checks import FAIL, PASS, SKIP, Check, print_table
from .client import Api, api_call, api_message, connect, service_account_of
from .doctor_pod import check_pod
from .options import DEFAULT_PORT_RANGE, parse_port_range
from .permissions import whoami
from .queries import NamespaceState, namespace_state
from .rbac import render_rbac


def role_rules(namespace: str, service_account: str) -> list[dict[str, Any]]:
    """The rules of the Role ``kubemagic rbac`` renders: what the backend needs."""
    docs = [d for d in yaml.safe_load_all(render_rbac(namespace, service_account)) if d]
    roles = [d for d in docs if d.get("kind") == "Role"]
    if not roles:
        raise RuntimeError("kubemagic rbac rendered no Role")
    return [rule for role in roles for rule in role.get("rules") or []]


def access_allowed(
    api: Api, namespace: str, verb: str, group: str, resource: str
) -> tuple[bool, str]:
    """One SelfSubjectAccessReview: may I ``verb`` ``resource`` (maybe ``res/sub``) here?
    Returns (allowed, the authorizer's reason)."""
    base, _, sub = resource.partition("/")
    attrs: dict[str, Any] = {"namespace": namespace, "verb": verb, "group": group, "resource": base}
    if sub:
        attrs["subresource"] = sub
    review = api.request(
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        body={
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attrs},
        },
    )
    status = review.get("status") or {}
    return bool(status.get("allowed")), status.get("reason") or ""


def check_api(api: Api) -> tuple[Check, str | None]:
    """Does the API server answer, and accept our credentials? Also: who are we to it."""
    server = api.api_client.configuration.host
    try:
        version: dict[str, Any] | None = api.request("GET", "/version", timeout=10)
    except ApiException as e:
        if e.status == 401:
            return Check("API reachable", FAIL, f"{server} rejected the credentials "
                         f"({api_message(e)})", "refresh the kubeconfig credentials or the "
                         "service-account token"), None
        # 403 on /version still proves the server is there and we are authenticated
        version = None
    except Exception as e:  # connection refused, DNS, TLS, timeout
        return Check("API reachable", FAIL, f"cannot reach {server}: {_short(e)}",
                     "check the cluster is up and KUBECONFIG / --kubeconfig / --context point at "
                     "it; in a JupyterHub pod allow egress to the API server (docs/jupyterhub.md)"
                     ), None
    user = whoami(api)
    detail = f"{server}" + (f", Kubernetes {version.get('gitVersion')}" if version else "")
    detail += f", as {user or 'unknown user'} ({api.source})"
    return Check("API reachable", PASS, detail), user


def check_namespace(api: Api, namespace: str) -> Check:
    """The namespace check, as :func:`.queries.namespace_state` answers it."""
    name = f"namespace {namespace}"
    try:
        with api_call("get", "namespaces"):
            state = namespace_state(api, namespace)
    except ApiException as e:
        return Check(name, FAIL, f"reading it failed: {api_message(e)}", "see the message")
    except KubemagicError as e:
        return Check(name, FAIL, f"reading it failed: {e.message}", e.fix)
    if state is NamespaceState.MISSING:
        return Check(name, FAIL, state.value, f"create it (kubectl create namespace "
                     f"{namespace}) or pick another with --namespace")
    if state is NamespaceState.UNKNOWN:
        return Check(name, SKIP, f"{state.value} (see the permission checks)")
    return Check(name, PASS, state.value)


def check_permissions(
    api: Api, namespace: str, user: str | None, service_account: str | None
) -> list[Check]:
    """One row per rule of the Role (and API group, resource): PASS when every verb of it
    is allowed, else FAIL naming the denied verbs and the command that grants them."""
    sa = service_account_of(user)
    sa_name = service_account or (sa[1] if sa else None) or "kubemagic"
    if sa or service_account:
        fix = (f"an admin runs `kubemagic rbac --namespace {namespace} --service-account "
               f"{sa_name} | kubectl apply -f -` (the least-privilege Role kubemagic needs)")
        if sa and sa[0] != namespace:
            fix += (f"; note you are service account {sa[0]}/{sa[1]}, from another namespace: "
                    f"bind it in the RoleBinding's subjects")
    else:
        fix = (f"an admin grants {user or 'your user'} the Role that `kubemagic rbac "
               f"--namespace {namespace}` prints (bind it to your user instead of the "
               f"service account), or use a namespace where you have these rights")
    checks = []
    for rule in role_rules(namespace, sa_name):
        verbs = rule.get("verbs") or []
        for group in rule.get("apiGroups") or [""]:
            for resource in rule.get("resources") or []:
                denied = [
                    v for v in verbs if not access_allowed(api, namespace, v, group, resource)[0]
                ]
                qualified = f"{resource}.{group}" if group else resource
                name = f"may {','.join(verbs)} {qualified}"
                if denied:
                    checks.append(Check(name, FAIL, f"denied: {', '.join(denied)}", fix))
                else:
                    checks.append(Check(name, PASS, "allowed"))
    return checks


def _short(e: BaseException) -> str:
    """An exception in one line: its type and the last line of its text."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}"[:300]


def run_doctor(
    namespace: str | None = None,
    image: str | None = None,
    service_account: str | None = None,
    controller_address: str | None = None,
    port_range: str | None = None,
    kubeconfig: str | None = None,
    context: str | None = None,
    timeout: float = 120.0,
    out: TextIO | None = None,
) -> int:
    """Run every check, print the table, return the exit code (0 all passed, 1 otherwise)."""
    out = out or sys.stdout
    checks: list[Check] = []
    ns = namespace or incluster.default_namespace(kubeconfig, context)
    ports = parse_port_range(port_range or DEFAULT_PORT_RANGE)
    address = incluster.controller_address(controller_address, kubeconfig, context)

    api: Api | None
    try:
        api = connect(kubeconfig, context)
    except KubemagicError as e:
        checks.append(Check("API reachable", FAIL, e.message, e.fix))
        api = None
    user = None
    if api is not None:
        api_check, user = check_api(api)
        checks.append(api_check)
        if api_check.status != PASS:
            api = None
    if api is None:
        checks += [Check(f"namespace {ns}", SKIP, "needs the API"),
                   Check("permissions", SKIP, "needs the API"),
                   Check("image", SKIP, "needs the API"),
                   Check("controller ports", SKIP, "needs the API")]
        print_table(checks, out)
        return 1

    ns_check = check_namespace(api, ns)
    checks.append(ns_check)
    checks += check_permissions(api, ns, user, service_account)
    image = image or incluster.own_image(api)  # $JUPYTER_IMAGE_SPEC, else the pod's own
    if ns_check.status == FAIL:
        checks += [Check("image", SKIP, "needs the namespace"),
                   Check("controller ports", SKIP, "needs the namespace")]
    elif not image:
        checks += [Check("image", FAIL, "no engine image: not given and $JUPYTER_IMAGE_SPEC "
                         "is not set", "pass --image (the notebook's image, or one built from "
                         "images/Dockerfile)"),
                   Check("controller ports", SKIP, "needs an image")]
    elif not address:
        checks += [Check(f"image {image}", SKIP, "not tested"),
                   Check("controller ports", FAIL, "no controller address could be detected",
                         "pass --controller-address (an address of this machine that pods "
                         "can reach)")]
    else:
        checks += check_pod(api, ns, image, address, ports, timeout)
    print_table(checks, out)
    return 1 if any(c.status == FAIL for c in checks) else 0
