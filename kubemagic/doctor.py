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

Exit code 0 when every check passed, 1 otherwise. Every failure says how to fix it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, TextIO

import yaml
from kubernetes.client.exceptions import ApiException

from .errors import KubemagicError
from .k8s import incluster
from .k8s.client import Api, api_message
from .k8s.manifests import engine_labels
from .k8s_admin import connect_api, resolve_namespace

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
#: label marking the doctor's test Job (it also carries the engine labels)
DOCTOR_LABEL = "kubemagic.io/doctor"

_IMAGE_REASONS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
_STUCK_REASONS = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


# -- the probe that runs in the test pod --------------------------------------------------
#: The probe reports twice: over each TCP connection it makes (so no log access is needed)
#: and on stdout. Exit code: 0 fine, +2 kubemagic/ipyparallel missing, +4 a port unreachable.
PROBE = r"""
import json, socket, sys, time
address, ports, token = sys.argv[1], [int(p) for p in sys.argv[2].split(",")], sys.argv[3]
out = {"python": sys.version.split()[0]}
code = 0
for mod in ("kubemagic", "ipyparallel"):
    try:
        out[mod] = __import__(mod).__version__
    except Exception as e:
        out[mod] = "MISSING: %s: %s" % (type(e).__name__, e)
        code |= 2
report = json.dumps(out)
out["ports"] = {}
# retried for 10 s: a NetworkPolicy engine admits a new pod's traffic a moment after it
# starts (engines reconnect on their own; one early refusal must not fail the check)
pending, deadline = list(ports), time.monotonic() + 10
while pending:
    for port in list(pending):
        try:
            with socket.create_connection((address, port), timeout=3) as s:
                s.sendall((token + "\n" + report + "\n").encode())
            out["ports"][str(port)] = "connected"
            pending.remove(port)
        except Exception as e:
            out["ports"][str(port)] = "%s: %s" % (type(e).__name__, e)
    if not pending or time.monotonic() > deadline:
        break
    time.sleep(0.5)
if pending:
    code |= 4
print("KUBEMAGIC-DOCTOR " + json.dumps(out), flush=True)
sys.exit(code)
"""


class Listeners:
    """TCP listeners on a few ports of the controller range; records who sent the token."""

    def __init__(self, port_range: tuple[int, int], token: str, bind: str = "0.0.0.0") -> None:
        self.token = token
        self.reached: set[int] = set()
        #: what the probe found in the image, as it sent it over a connection
        self.report: dict[str, Any] | None = None
        self.sockets: list[socket.socket] = []
        low, high = port_range
        wanted = [low, high] if high > low else [low]
        if high - low > 1:
            wanted.insert(1, (low + high) // 2)
        for want in wanted:  # the nearest free port to each wanted one (a session may run)
            for port in sorted(range(low, high + 1), key=lambda p: abs(p - want)):
                if any(s.getsockname()[1] == port for s in self.sockets):
                    continue
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    sock.bind((bind, port))
                except OSError:
                    sock.close()
                    continue
                sock.listen(8)
                sock.settimeout(0.2)
                self.sockets.append(sock)
                break
        self.ports = sorted(s.getsockname()[1] for s in self.sockets)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._serve, args=(s,), daemon=True)
                         for s in self.sockets]
        for t in self._threads:
            t.start()

    def _serve(self, sock: socket.socket) -> None:
        port = sock.getsockname()[1]
        while not self._stop.is_set():
            try:
                conn, _ = sock.accept()
            except (socket.timeout, OSError):
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                try:
                    while data.count(b"\n") < 2 and len(data) < 65536:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                except OSError:
                    pass
                lines = data.decode(errors="replace").splitlines()
                if lines and lines[0].strip() == self.token:
                    self.reached.add(port)
                    if len(lines) > 1:
                        try:
                            self.report = json.loads(lines[1])
                        except ValueError:
                            pass

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(1)
        for s in self.sockets:
            s.close()


# -- checks -----------------------------------------------------------------------------------
def role_rules(namespace: str, service_account: str) -> list[dict[str, Any]]:
    """The rules of the Role ``kubemagic rbac`` renders: what the backend needs."""
    from .k8s.rbac import render_rbac

    docs = [d for d in yaml.safe_load_all(render_rbac(namespace, service_account)) if d]
    roles = [d for d in docs if d.get("kind") == "Role"]
    if not roles:
        raise RuntimeError("kubemagic rbac rendered no Role")
    return [rule for role in roles for rule in role.get("rules") or []]


def access_allowed(api: Api, namespace: str, verb: str, group: str, resource: str) -> tuple[bool, str]:
    """One SelfSubjectAccessReview: may I ``verb`` ``resource`` (maybe ``res/sub``) here?"""
    base, _, sub = resource.partition("/")
    attrs: dict[str, Any] = {"namespace": namespace, "verb": verb, "group": group, "resource": base}
    if sub:
        attrs["subresource"] = sub
    body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attrs}}
    resp = api.authorization.create_self_subject_access_review(
        body=body, _preload_content=False, _request_timeout=15)
    status = api.read_json(resp).get("status") or {}
    return bool(status.get("allowed")), status.get("reason") or ""


def _qualified(group: str, resource: str) -> str:
    return f"{resource}.{group}" if group else resource


def check_api(api: Api) -> tuple[Check, str | None]:
    from kubernetes.client import VersionApi

    server = api.api_client.configuration.host
    try:
        version = VersionApi(api.api_client).get_code(_request_timeout=10)
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
    from .k8s.permissions import whoami

    user = whoami(api)
    detail = f"{server}" + (f", Kubernetes {version.git_version}" if version else "")
    detail += f", as {user or 'unknown user'} ({api.source})"
    return Check("API reachable", PASS, detail), user


def check_namespace(api: Api, namespace: str) -> Check:
    name = f"namespace {namespace}"
    missing = Check(name, FAIL, "does not exist",
                    f"create it (kubectl create namespace {namespace}) or pick another with "
                    "--namespace")
    try:
        api.core.read_namespace(namespace, _request_timeout=15)
        return Check(name, PASS, "exists")
    except ApiException as e:
        if e.status == 404:
            return missing
        if e.status != 403:
            return Check(name, FAIL, f"reading it failed: {api_message(e)}", "see the message")
    # may not read namespaces (normal for a namespaced Role): a dry-run create tells
    body = {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"generateName": "kubemagic-doctor-"}, "type": "Opaque"}
    try:
        api.core.create_namespaced_secret(namespace, body, dry_run="All", _request_timeout=15)
        return Check(name, PASS, "exists (checked with a dry-run create)")
    except ApiException as e:
        if e.status == 404:
            return missing
        if e.status == 403:
            return Check(name, SKIP, "cannot tell: may neither read it nor create Secrets in it "
                         "(see the permission checks)")
        return Check(name, FAIL, f"dry-run create failed: {api_message(e)}", "see the message")


def check_permissions(api: Api, namespace: str, user: str | None,
                      service_account: str | None) -> list[Check]:
    sa = _service_account_of(user)
    sa_name = service_account or (sa[1] if sa else None) or "kubemagic"
    rules = role_rules(namespace, sa_name)
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
    for rule in rules:
        for group in rule.get("apiGroups") or [""]:
            for resource in rule.get("resources") or []:
                denied = []
                for verb in rule.get("verbs") or []:
                    allowed, _ = access_allowed(api, namespace, verb, group, resource)
                    if not allowed:
                        denied.append(verb)
                verbs = ",".join(rule.get("verbs") or [])
                name = f"may {verbs} {_qualified(group, resource)}"
                if denied:
                    checks.append(Check(name, FAIL, f"denied: {', '.join(denied)}", fix))
                else:
                    checks.append(Check(name, PASS, "allowed"))
    return checks


def probe_job(name: str, namespace: str, image: str, address: str, ports: list[int],
              token: str, deadline_s: int) -> dict[str, Any]:
    """A one-pod Job labelled like engines (the engines' NetworkPolicy applies to it)."""
    labels = engine_labels(name, incluster.owner_user())
    labels[DOCTOR_LABEL] = "probe"
    pod_spec = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 1,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "probe",
            "image": image,
            "command": ["python", "-c", PROBE, address, ",".join(map(str, ports)), token],
            "env": [{"name": "IPYTHONDIR", "value": "/tmp/.ipython"}],
            "securityContext": {"allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]}},
            "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}},
        }],
    }
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"backoffLimit": 0, "ttlSecondsAfterFinished": 60,
                 "activeDeadlineSeconds": deadline_s,
                 "template": {"metadata": {"labels": labels}, "spec": pod_spec}},
    }


def check_pod(api: Api, namespace: str, image: str, address: str,
              port_range: tuple[int, int], timeout: float) -> list[Check]:
    """Run the probe Job; return the image check and the controller-ports check."""
    image_name, net_name = f"image {image}", f"pods reach {address}:{port_range[0]}-{port_range[1]}"
    token = secrets.token_hex(8)
    listeners = Listeners(port_range, token)
    if not listeners.ports:
        listeners.close()
        return [Check(image_name, SKIP, "not tested"),
                Check(net_name, FAIL, "every port of the range is in use on this machine",
                      "stop other kubemagic sessions, or pick another --port-range")]
    job = f"kubemagic-doctor-{uuid.uuid4().hex[:6]}"
    body = probe_job(job, namespace, image, address, listeners.ports, token, int(timeout) + 30)
    try:
        api.batch.create_namespaced_job(namespace, body, _request_timeout=15)
    except ApiException as e:
        listeners.close()
        why = f"cannot create the test Job: {api_message(e)}"
        if e.status == 403:
            return [Check(image_name, SKIP, why + " (see the permission checks)"),
                    Check(net_name, SKIP, "needs the test pod")]
        return [Check(image_name, FAIL, why, "see the message"),
                Check(net_name, SKIP, "needs the test pod")]
    try:
        state, log = _wait_probe(api, namespace, job, listeners, timeout)
    finally:
        listeners.close()
        try:
            api.batch.delete_namespaced_job(job, namespace, propagation_policy="Background",
                                            _request_timeout=15)
        except ApiException:
            pass  # ttlSecondsAfterFinished removes it; `kubemagic clean` too
    result = _parse_probe(log) or listeners.report
    ports_text = ",".join(map(str, listeners.ports))
    exit_code = state.exit_code if state is not None else None

    if state is not None and state.reason in _IMAGE_REASONS:
        return [Check(image_name, FAIL, f"{state.reason}: {state.message}".strip(": "),
                      "check the image name and that the nodes may pull it (private registry: "
                      "imagePullSecrets), or pass --image"),
                Check(net_name, SKIP, "needs the test pod")]
    if state is not None and state.reason in _STUCK_REASONS:
        return [Check(image_name, FAIL, f"{state.reason}: {state.message}",
                      "the container could not start: check the image has python and runs "
                      "as a non-root user (uid 1000)"),
                Check(net_name, SKIP, "needs the test pod")]
    if result is None and exit_code in (4, 6):
        # no log access and no connection came through: the exit code still tells
        result = {"python": "?", "kubemagic": "MISSING" if exit_code & 2 else "importable",
                  "ipyparallel": "MISSING" if exit_code & 2 else "importable"}
    if result is None:
        where = (f"pod {state.phase} {state.reason} {state.message}".strip() if state
                 else "no pod was created")
        if state is not None and (state.reason == "Unschedulable" or state.phase == "Pending"):
            return [Check(image_name, FAIL, f"the test pod did not start within {timeout:.0f} s: "
                          f"{where}", "see the scheduler's message; make room on the nodes or "
                          "raise --timeout if pulling the image is only slow"),
                    Check(net_name, SKIP, "needs the test pod")]
        detail = f"the test pod ran no probe ({where}, exit code {exit_code})"
        if log.strip():
            detail += f"; output: {log.strip()[-300:]}"
        return [Check(image_name, FAIL, detail,
                      "the image needs python on PATH (engines run `python -m kubemagic.k8s.engine`) and must run as uid 1000"),
                Check(net_name, SKIP, "needs the test pod")]

    bad = [m for m in ("kubemagic", "ipyparallel") if str(result.get(m, "")).startswith("MISSING")]
    versions = ", ".join(f"{m} {result.get(m)}" for m in ("python", "kubemagic", "ipyparallel"))
    if bad:
        image_check = Check(image_name, FAIL, f"runs, but {versions}",
                            "install kubemagic in the engine image (images/Dockerfile), or "
                            "use the notebook's own image")
    else:
        image_check = Check(image_name, PASS, f"pulled and ran: {versions}")
    failed = [p for p in listeners.ports if p not in listeners.reached]
    if not failed:
        net = Check(net_name, PASS, f"test pod connected to ports {ports_text}")
    else:
        errors = "; ".join(f"{p}: {result.get('ports', {}).get(str(p), 'no report')}" for p in failed)
        loopback = _is_loopback(address)
        blocked = None if loopback else blocking_policies(api, namespace, address, failed[0])
        fix = (f"{address} is a loopback address: in a pod it is the pod itself; pass "
               "--controller-address with this machine's address as pods see it")
        if not loopback:
            fix = (f"engines must reach {address} on TCP {port_range[0]}-{port_range[1]}: "
                   "add the NetworkPolicy ingress rule for engine pods to the kernel's pod "
                   "(docs/jupyterhub.md; `kubemagic rbac` prints it)")
            fix += ("" if blocked and blocked.startswith("NetworkPolicy") else
                    "; open firewalls for the range; or pass the right --controller-address")
        detail = f"test pod could not connect to {errors}"
        if blocked:
            detail += f"; {blocked}"
        net = Check(net_name, FAIL, detail, fix)
    return [image_check, net]


def blocking_policies(api: Api, namespace: str, address: str, port: int) -> str | None:
    """Name the NetworkPolicies that keep engine pods from ``address:port`` (the kernel's
    pod when the kernel runs in one), or say why they could not be read."""
    from .k8s.netpol import Endpoint, explain_block

    kernel_pod = incluster.own_pod(api)
    kernel_ns = incluster.pod_namespace() or namespace
    policies = []
    for ns in dict.fromkeys([namespace, kernel_ns]):
        try:
            policies += api.request(
                "GET", f"/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
                timeout=10)["items"]
        except ApiException as e:
            return (f"the NetworkPolicies of namespace {ns} could not be read to name the one "
                    f"blocking ({api_message(e)}; the Role of `kubemagic rbac` may list them)")
    controller_labels = ((kernel_pod or {}).get("metadata") or {}).get("labels")
    found = explain_block(
        policies,
        engine=Endpoint(engine_labels("probe", incluster.owner_user()), ip="0.0.0.0"),
        controller=Endpoint(controller_labels if kernel_pod else None, ip=address),
        port=port,
    )
    if found is None and policies:
        return (f"no NetworkPolicy of {', '.join(dict.fromkeys([namespace, kernel_ns]))} "
                "blocks it by its rules: look for a firewall or a wrong address")
    return found


def _wait_probe(api: Api, namespace: str, job: str, listeners: Listeners,
                timeout: float) -> tuple[Any, str]:
    """Poll the probe pod until it finished, got stuck on its image, or the time is up."""
    from .k8s.podstate import pod_state

    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        resp = api.core.list_namespaced_pod(namespace, label_selector=f"job-name={job}",
                                            _preload_content=False, _request_timeout=15)
        pods = api.read_json(resp).get("items") or []
        if pods:
            pod = pods[0]
            state = pod_state(pod)
            if state.reason in _IMAGE_REASONS | _STUCK_REASONS:
                # ErrImagePull turns into backoff retries: the first error is the answer
                return state, ""
            if state.phase in ("Succeeded", "Failed"):
                return state, _pod_log(api, namespace, pod["metadata"]["name"])
        time.sleep(0.5)
    log = ""
    if state is not None and state.name and state.phase not in ("Pending",):
        log = _pod_log(api, namespace, state.name)
    return state, log


def _pod_log(api: Api, namespace: str, pod: str) -> str:
    try:
        return api.core.read_namespaced_pod_log(pod, namespace, container="probe",
                                                _request_timeout=15)
    except ApiException as e:
        return f"(log unavailable: {api_message(e)})"


def _parse_probe(log: str) -> dict[str, Any] | None:
    for line in (log or "").splitlines():
        if line.startswith("KUBEMAGIC-DOCTOR "):
            try:
                return json.loads(line.split(" ", 1)[1])
            except ValueError:
                return None
    return None


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(address)).is_loopback
    except (OSError, ValueError):
        return address == "localhost"


def _service_account_of(user: str | None) -> tuple[str, str] | None:
    """``(namespace, name)`` when the API user is a service account."""
    match = re.fullmatch(r"system:serviceaccount:([^:]+):(.+)", user or "")
    return (match[1], match[2]) if match else None


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}"[:300]


# -- report -----------------------------------------------------------------------------------
def print_table(checks: list[Check], out: TextIO) -> None:
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{c.status}  {c.name.ljust(width)}  {c.detail}", file=out)
    failures = [c for c in checks if c.status == FAIL]
    if failures:
        print(f"\n{len(failures)} check(s) failed:", file=out)
        for c in failures:
            print(f"- {c.name}: {c.detail}\n  how to fix: {c.fix}", file=out)
    else:
        print(f"\nall {len(checks)} checks passed: the Kubernetes backend can run here", file=out)


def run_doctor(namespace: str | None = None, image: str | None = None,
               service_account: str | None = None, controller_address: str | None = None,
               port_range: str | None = None, kubeconfig: str | None = None,
               context: str | None = None, timeout: float = 120.0,
               out: TextIO | None = None) -> int:
    """Run every check, print the table, return the exit code (0 all passed, 1 otherwise)."""
    from .k8s.options import DEFAULT_PORT_RANGE, parse_port_range

    out = out or sys.stdout
    checks: list[Check] = []
    ns = resolve_namespace(namespace, kubeconfig, context)
    ports = parse_port_range(port_range or DEFAULT_PORT_RANGE)
    address = (controller_address or os.environ.get("KUBEMAGIC_CONTROLLER_ADDRESS")
               or incluster.detect_controller_address(kubeconfig, context))

    try:
        api = connect_api(kubeconfig, context)
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
