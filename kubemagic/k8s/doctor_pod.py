"""``kubemagic doctor``'s pod checks: does the engine image run, and do its pods reach the
controller's ports on the advertised address?

Both are answered by one real pod (:mod:`.probe`) rather than guessed from
configuration: image pulls, registries, PodSecurity, NetworkPolicies and firewalls all
have their say in whether an engine could start and register. Running the pod is I/O;
judging what it reported (:func:`judge_image`, :func:`judge_ports`) is pure.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from typing import Any

from kubernetes.client.exceptions import ApiException

from ..errors import KubemagicError
from . import incluster
from .checks import FAIL, PASS, SKIP, Check
from .client import Api, api_message, namespaced
from .listeners import Listeners
from .manifests import JOB_NAME_LABEL, engine_labels
from .netpol import Endpoint, explain_block
from .podstate import PodState, pod_state
from .probe import PROBE_CONTAINER, REPORT_PREFIX, probe_command, probe_job
from .queries import pod_log

#: The image could not be pulled: retrying only backs off, the first error is the answer.
IMAGE_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)
#: The container could not be created or started from the image.
STUCK_REASONS = frozenset(
    {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
)
_NEEDS_POD = "needs the test pod"


def check_pod(
    api: Api, namespace: str, image: str, address: str, port_range: tuple[int, int], timeout: float
) -> list[Check]:
    """Run the probe Job; return the image check and the controller-ports check."""
    image_name = f"image {image}"
    net_name = f"pods reach {address}:{port_range[0]}-{port_range[1]}"
    token = secrets.token_hex(8)
    listeners = Listeners(port_range, token)
    if not listeners.ports:
        listeners.close()
        return [
            Check(image_name, SKIP, "not tested"),
            Check(net_name, FAIL, "every port of the range is in use on this machine",
                  "stop other kubemagic sessions, or pick another --port-range"),
        ]
    job = f"kubemagic-doctor-{uuid.uuid4().hex[:6]}"
    body = probe_job(
        name=job, namespace=namespace, owner=incluster.owner_user(), image=image,
        command=probe_command(address, listeners.ports, token),
        deadline_seconds=int(timeout) + 30,
    )
    jobs = namespaced(namespace, "jobs", group="batch/v1")
    try:
        api.request("POST", jobs, body=body)
    except ApiException as e:
        listeners.close()
        why = f"cannot create the test Job: {api_message(e)}"
        if e.status == 403:
            return [Check(image_name, SKIP, why + " (see the permission checks)"),
                    Check(net_name, SKIP, _NEEDS_POD)]
        return [Check(image_name, FAIL, why, "see the message"), Check(net_name, SKIP, _NEEDS_POD)]
    try:
        state, log = _wait_probe(api, namespace, job, timeout)
    finally:
        listeners.close()
        try:
            api.request("DELETE", f"{jobs}/{job}", query={"propagationPolicy": "Background"})
        except ApiException:
            pass  # ttlSecondsAfterFinished removes it; `kubemagic clean` too
    report = probe_report(log, listeners.report, state.exit_code if state else None)
    image_check = judge_image(image, state, report, log, timeout)
    if report is None or (state is not None and state.reason in IMAGE_REASONS | STUCK_REASONS):
        return [image_check, Check(net_name, SKIP, _NEEDS_POD)]
    failed = [p for p in listeners.ports if p not in listeners.reached]
    loopback = incluster.is_loopback(address)
    blocked = None
    if failed and not loopback:
        blocked = blocking_policies(api, namespace, address, failed[0])
    net_check = judge_ports(net_name, address, port_range, listeners.ports, listeners.reached,
                            report, loopback, blocked)
    return [image_check, net_check]


def _wait_probe(api: Api, namespace: str, job: str, timeout: float) -> tuple[PodState | None, str]:
    """Poll the probe pod until it finished, got stuck on its image, or the time is up;
    return its last state and its log ("" when there is none to read)."""
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        pods = api.request("GET", namespaced(namespace, "pods"),
                           query={"labelSelector": f"{JOB_NAME_LABEL}={job}"})["items"]
        if pods:
            state = pod_state(pods[0])
            if state.reason in IMAGE_REASONS | STUCK_REASONS:
                return state, ""
            if state.phase in ("Succeeded", "Failed"):
                return state, _log(api, namespace, state.name)
        time.sleep(0.5)
    if state is not None and state.name and state.phase != "Pending":
        return state, _log(api, namespace, state.name)
    return state, ""


def _log(api: Api, namespace: str, pod: str) -> str:
    """The probe's output, or why it cannot be read (quoted in a failure's detail)."""
    try:
        return pod_log(api, namespace, pod, PROBE_CONTAINER)
    except ApiException as e:
        return f"(log unavailable: {api_message(e)})"
    except KubemagicError as e:
        return f"(log unavailable: {e.message})"


def parse_probe(log: str) -> dict[str, Any] | None:
    """The report the probe printed on stdout, or None."""
    for line in (log or "").splitlines():
        if line.startswith(REPORT_PREFIX):
            try:
                return json.loads(line[len(REPORT_PREFIX):])
            except ValueError:
                return None
    return None


def probe_report(
    log: str, sent: dict[str, Any] | None, exit_code: int | None
) -> dict[str, Any] | None:
    """What the probe found: its log line, else what it sent over a connection, else what
    its exit code tells (4 or 6: ran, no port reached; no log access), else None."""
    report = parse_probe(log) or sent
    if report is None and exit_code in (4, 6):
        found = "MISSING" if exit_code & 2 else "importable"
        report = {"python": "?", "kubemagic": found, "ipyparallel": found}
    return report


def judge_image(
    image: str, state: PodState | None, report: dict[str, Any] | None, log: str, timeout: float
) -> Check:
    """The image check from the probe pod's last state and its report."""
    name = f"image {image}"
    if state is not None and state.reason in IMAGE_REASONS:
        return Check(name, FAIL, f"{state.reason}: {state.message}".strip(": "),
                     "check the image name and that the nodes may pull it (private registry: "
                     "imagePullSecrets), or pass --image")
    if state is not None and state.reason in STUCK_REASONS:
        return Check(name, FAIL, f"{state.reason}: {state.message}",
                     "the container could not start: check the image has python and runs "
                     "as a non-root user (uid 1000)")
    if report is None:
        where = (f"pod {state.phase} {state.reason} {state.message}".strip() if state
                 else "no pod was created")
        if state is not None and (state.reason == "Unschedulable" or state.phase == "Pending"):
            return Check(name, FAIL, f"the test pod did not start within {timeout:.0f} s: {where}",
                         "see the scheduler's message; make room on the nodes or raise "
                         "--timeout if pulling the image is only slow")
        exit_code = state.exit_code if state is not None else None
        detail = f"the test pod ran no probe ({where}, exit code {exit_code})"
        if log.strip():
            detail += f"; output: {log.strip()[-300:]}"
        return Check(name, FAIL, detail, "the image needs python on PATH (engines run "
                     "`python -m kubemagic.k8s.engine`) and must run as uid 1000")
    versions = ", ".join(f"{m} {report.get(m)}" for m in ("python", "kubemagic", "ipyparallel"))
    if any(str(report.get(m, "")).startswith("MISSING") for m in ("kubemagic", "ipyparallel")):
        return Check(name, FAIL, f"runs, but {versions}", "install kubemagic in the engine "
                     "image (images/Dockerfile), or use the notebook's own image")
    return Check(name, PASS, f"pulled and ran: {versions}")


def judge_ports(
    name: str, address: str, port_range: tuple[int, int], ports: list[int], reached: set[int],
    report: dict[str, Any], loopback: bool, blocked: str | None,
) -> Check:
    """The controller-ports check: did the probe connect to every listening port?
    ``blocked`` names what blocks the first failed port (see :func:`blocking_policies`)."""
    failed = [p for p in ports if p not in reached]
    if not failed:
        return Check(name, PASS, f"test pod connected to ports {','.join(map(str, ports))}")
    said = report.get("ports", {})
    detail = "test pod could not connect to " + "; ".join(
        f"{p}: {said.get(str(p), 'no report')}" for p in failed)
    if blocked:
        detail += f"; {blocked}"
    if loopback:
        fix = (f"{address} is a loopback address: in a pod it is the pod itself; pass "
               "--controller-address with this machine's address as pods see it")
    else:
        fix = (f"engines must reach {address} on TCP {port_range[0]}-{port_range[1]}: add the "
               "NetworkPolicy ingress rule for engine pods to the kernel's pod "
               "(docs/jupyterhub.md; `kubemagic rbac` prints it)")
        if not (blocked and blocked.startswith("NetworkPolicy")):
            fix += "; open firewalls for the range; or pass the right --controller-address"
    return Check(name, FAIL, detail, fix)


def blocking_policies(api: Api, namespace: str, address: str, port: int) -> str | None:
    """Name the NetworkPolicies that keep engine pods from ``address:port`` (the kernel's
    pod when the kernel runs in one), or say why they could not be read."""
    kernel_pod = incluster.own_pod(api)
    spaces = list(dict.fromkeys([namespace, incluster.pod_namespace() or namespace]))
    policies: list[dict[str, Any]] = []
    for ns in spaces:
        try:
            policies += api.request(
                "GET", f"/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies", timeout=10
            )["items"]
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
        return (f"no NetworkPolicy of {', '.join(spaces)} blocks it by its rules: look for a "
                "firewall or a wrong address")
    return found
