"""Pure builders of the Kubernetes objects kubemagic creates: plain dicts in, plain dicts out.

No I/O here, so every policy decision (labels, failure policy, security context, what
the engine pods may and may not carry) is visible in one place and unit-tested without a
cluster. :mod:`kubemagic.k8s.launcher` applies these objects. The Role, the backend's
contract, is in :mod:`kubemagic.k8s.role`; the objects only an admin applies around it
(ServiceAccount, RoleBinding, NetworkPolicy) are built in :mod:`kubemagic.k8s.rbac`, and
``kubemagic doctor``'s test Job in :mod:`kubemagic.k8s.probe`.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Mapping
from typing import Any

from .lease import first_deadline

#: Engine exit code meaning "the controller is gone" (heartbeats stopped, or registration
#: timed out). The Job's podFailurePolicy fails the whole Job on it, so engines of a dead
#: kernel vanish in seconds instead of being recreated for minutes.
EXIT_CONTROLLER_GONE = 17
#: Engine exit code meaning "I lost touch with a controller that still answers": no
#: registration reply or heartbeats, yet its port accepts a connection (a lost packet, a
#: controller slow under load). Not FailJob: that would end every engine of a live
#: session for one engine's trouble. Counted against the slot's backoff limit; the Job
#: replaces the pod.
EXIT_CONTROLLER_SILENT = 18
#: Engine exit code after SIGTERM (pod deleted, evicted, scaled away). Non-zero on purpose:
#: an Indexed Job counts a pod that exits 0 as its index *completed* and never replaces
#: it; this code is Ignored by the podFailurePolicy, so the index gets a new pod without
#: using up the backoff limit.
EXIT_TERMINATED = 143
#: What an engine writes to its container's log once registered: a crashed engine whose
#: log lacks it crashed at start-up, before it could register.
REGISTERED_MARK = "kubemagic: engine registered"

ENGINE_CONTAINER = "engine"
#: Key of the engine connection info (HMAC key, CurveZMQ server key) in the Secret.
SECRET_KEY = "IPP_CONNECTION_INFO"
INDEX_ENV = "KUBEMAGIC_ENGINE_INDEX"
POD_NAME_ENV = "KUBEMAGIC_POD_NAME"
#: The pod's grace period, for the engine, which leaves before it ends (:mod:`.engine`).
GRACE_ENV = "KUBEMAGIC_GRACE_SECONDS"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_OWNER = "kubemagic.io/owner"
LABEL_ENGINE_SET = "kubemagic.io/engine-set"

#: The engine pods' selector used by the NetworkPolicy (no per-session labels in it).
ENGINE_POD_SELECTOR = {LABEL_NAME: "kubemagic", LABEL_COMPONENT: "engine"}

#: JupyterHub (z2jh) labels of singleuser pods: the pods where kernels, and so controllers,
#: run. Engines must never carry them — they would inherit the singleuser NetworkPolicy.
SINGLEUSER_POD_LABELS = {"component": "singleuser-server"}

#: IPython needs a writable profile dir, and the image's $HOME may not belong to the
#: engines' user (``run_as_user``). Users' ``env`` overrides it.
_DEFAULT_ENGINE_ENV = {"IPYTHONDIR": "/tmp/.ipython"}

_LABEL_VALUE_BAD = re.compile(r"[^A-Za-z0-9._-]+")
_NAME_BAD = re.compile(r"[^a-z0-9-]+")
#: Job names stay short: pod hostnames are "<job>-<index>" and must fit in 63 characters.
_MAX_JOB_NAME = 52


def sanitize_label_value(value: str) -> str:
    """Make any string a valid label value: ``[A-Za-z0-9._-]``, alphanumeric ends, ≤ 63."""
    text = _LABEL_VALUE_BAD.sub("-", value)[:63].strip("-_.")
    return text or "unknown"


def job_name(cluster_id: str, engine_set_id: str = "") -> str:
    """A DNS-1123 name for the Job and its Secret, unique per cluster and engine set.

    Long ids are shortened with a hash so two sessions never collide on a truncated name.
    """
    raw = "-".join(p for p in ("kubemagic", cluster_id, engine_set_id) if p).lower()
    name = _NAME_BAD.sub("-", raw).strip("-")
    if len(name) > _MAX_JOB_NAME or name != raw:
        digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
        name = f"{name[: _MAX_JOB_NAME - 9].rstrip('-')}-{digest}"
    return name


def engine_labels(cluster_id: str, owner: str, engine_set_id: str = "") -> dict[str, str]:
    """Labels of the Job, its pods and its Secret (``kubemagic ls``/``clean`` select on them)."""
    labels = {
        LABEL_NAME: "kubemagic",
        LABEL_INSTANCE: sanitize_label_value(cluster_id),
        LABEL_COMPONENT: "engine",
        LABEL_MANAGED_BY: "kubemagic",
        LABEL_OWNER: sanitize_label_value(owner),
    }
    if engine_set_id:
        labels[LABEL_ENGINE_SET] = sanitize_label_value(engine_set_id)
    return labels


def owner_reference(api_version: str, kind: str, name: str, uid: str) -> dict[str, Any]:
    """An ownerReference for garbage collection.

    ``blockOwnerDeletion`` stays unset: setting it needs update rights on the owner's
    finalizers, which the least-privilege Role does not grant.
    """
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid}


def connection_secret(
    name: str, namespace: str, labels: Mapping[str, str], connection_info: str
) -> dict[str, Any]:
    """The Secret holding the engine connection info — the only place the keys live."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "type": "Opaque",
        "stringData": {SECRET_KEY: connection_info},
    }


def secret_owner_patch(job: str, job_uid: str) -> dict[str, Any]:
    """Merge patch making the Job own its Secret, so the Secret goes when the Job goes
    (stop, failure + ttlSecondsAfterFinished, or the kernel pod's deletion)."""
    return {"metadata": {"ownerReferences": [owner_reference("batch/v1", "Job", job, job_uid)]}}


def scale_patch(n: int) -> dict[str, Any]:
    """Merge patch resizing an Indexed Job to slots 0..n-1.

    Elastic Indexed Jobs require ``parallelism`` and ``completions`` to change together;
    scaling down removes the highest indices. ``n == 0`` sets only ``parallelism`` to 0
    (zero completions would make the Job complete — and ``ttlSecondsAfterFinished`` delete
    it). Not ``suspend``: a suspended Job's ``activeDeadlineSeconds`` clock stops, and that
    clock is the session's lease (:mod:`.lease`), which must run in every state.
    """
    if n == 0:
        return {"spec": {"parallelism": 0}}
    return {"spec": {"suspend": False, "parallelism": n, "completions": n}}



def engine_job(
    *,
    name: str,
    namespace: str,
    labels: Mapping[str, str],
    image: str,
    command: list[str],
    args: list[str],
    n: int,
    secret_name: str,
    env: Mapping[str, str] | None = None,
    cpu: str | None = None,
    memory: str | None = None,
    gpu: int = 0,
    node_selector: Mapping[str, str] | None = None,
    tolerations: list[dict[str, Any]] | None = None,
    service_account: str | None = None,
    image_pull_policy: str | None = None,
    run_as_user: int | None = 1000,
    active_deadline_seconds: int | None = None,
    backoff_limit_per_index: int = 100,
    termination_grace_period_seconds: int = 30,
    owner: Mapping[str, Any] | None = None,
    pod_overrides: Mapping[str, Any] | None = None,
    spread: bool = True,
    node_loss_seconds: int = 10,
    lease_seconds: int = 0,
) -> dict[str, Any]:
    """The engines' Indexed Job: slot ``i`` is completion index ``i``.

    Pods prefer distinct nodes (``spread``), and tolerate a node that is not ready or
    unreachable for ``node_loss_seconds`` instead of Kubernetes' 300 s: a lost node's
    engines are evicted within seconds, and replaced on the others as soon as they are
    Failed (the failure policy below replaces only Failed pods; the launcher marks a lost
    node's pods Failed, :meth:`.EngineControl.release_lost_pod`). ``lease_seconds``: the
    Job's first ``activeDeadlineSeconds`` (:mod:`.lease`).

    After SIGTERM an engine has ``termination_grace_period_seconds`` (also in its
    :data:`GRACE_ENV`) to finish its item and hand the rest back (:mod:`.engine`).

    Failure policy, in rule order:

    * exit :data:`EXIT_CONTROLLER_GONE` → FailJob: the controller died, replacements
      could never register; with ``ttlSecondsAfterFinished: 0`` Job, pods and (owned)
      Secret disappear within seconds.
    * ``DisruptionTarget`` (eviction, preemption, node drain) → Ignore: replaced, not
      counted.
    * exit :data:`EXIT_TERMINATED` (pod deleted) → Ignore: replaced, not counted.
    * anything else (OOM kill, crash) counts against the slot's generous
      ``backoffLimitPerIndex``; a slot past it stays down, the others keep running.
    """
    container: dict[str, Any] = {
        "name": ENGINE_CONTAINER,
        "image": image,
        "command": list(command),
        "args": list(args),
        "env": _engine_env(secret_name, env or {}),
        # the tail of the log lands in the pod status when the engine fails, so the
        # reason survives the pod (ttlSecondsAfterFinished deletes it at once)
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if image_pull_policy:
        container["imagePullPolicy"] = image_pull_policy
    resources = _resources(cpu, memory, gpu)
    if resources:
        container["resources"] = resources

    pod_security: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
    if run_as_user is not None:
        pod_security.update(runAsNonRoot=True, runAsUser=run_as_user)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": termination_grace_period_seconds,
        # engines do not call the API: no token in the pod (one volume less to mount),
        # unless the user chose a service account for them, which is a request for its token
        "automountServiceAccountToken": bool(service_account),
        # no env var per Service in the namespace (slow start, noisy environment)
        "enableServiceLinks": False,
        # the pause process is PID 1: the engine is an ordinary process that can be killed
        # (kubectl exec ... kill) and reaped like on a node, instead of a PID 1 that
        # ignores default-action signals
        "shareProcessNamespace": True,
        "securityContext": pod_security,
        "containers": [container],
    }
    if service_account:
        pod_spec["serviceAccountName"] = service_account
    if node_selector:
        pod_spec["nodeSelector"] = dict(node_selector)
    pod_spec["tolerations"] = [
        *copy.deepcopy(list(tolerations or [])),
        *({"key": f"node.kubernetes.io/{taint}", "operator": "Exists", "effect": "NoExecute",
           "tolerationSeconds": node_loss_seconds} for taint in ("not-ready", "unreachable")),
    ]
    if spread:
        pod_spec["topologySpreadConstraints"] = [{
            "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": dict(labels)},
            # a lost or cordoned node (tainted NoSchedule) is no place to spread to
            "nodeTaintsPolicy": "Honor",
        }]

    template: dict[str, Any] = {"metadata": {"labels": dict(labels)}, "spec": pod_spec}
    overrides = dict(pod_overrides or {})
    if "metadata" in overrides:
        template["metadata"] = deep_merge(template["metadata"], overrides.pop("metadata"))
    template["spec"] = deep_merge(pod_spec, overrides)
    grace = str(template["spec"].get("terminationGracePeriodSeconds"))  # after overrides
    for c in template["spec"]["containers"]:
        if c.get("name") == ENGINE_CONTAINER:
            c.setdefault("env", []).append({"name": GRACE_ENV, "value": grace})

    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if owner:
        metadata["ownerReferences"] = [dict(owner)]
    spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": n,
        "parallelism": n,
        # Per index, not per Job: the Job controller delays every replacement by
        # 10 s × 2^(failures - 1), up to 6 min, counting failures since the last *success* —
        # and engines never succeed. A Job-wide count would make every replacement slow
        # after a few preemptions anywhere; per index, only a slot that keeps failing waits.
        "backoffLimitPerIndex": backoff_limit_per_index,
        # a Job-wide cap too, for API servers without per-index limits (< 1.29), which drop
        # the field above and would otherwise default to 6
        "backoffLimit": 1_000_000,
        "ttlSecondsAfterFinished": 0,
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": ENGINE_CONTAINER,
                        "operator": "In",
                        "values": [EXIT_CONTROLLER_GONE],
                    },
                },
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                {
                    "action": "Ignore",
                    "onExitCodes": {
                        "containerName": ENGINE_CONTAINER,
                        "operator": "In",
                        "values": [EXIT_TERMINATED],
                    },
                },
            ]
        },
        "template": template,
    }
    deadline = first_deadline(lease_seconds, active_deadline_seconds)
    if deadline:
        spec["activeDeadlineSeconds"] = deadline
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": spec}


def _engine_env(secret_name: str, env: Mapping[str, str]) -> list[dict[str, Any]]:
    """Engine env: the connection info by reference (never a literal), the slot index from
    the completion-index annotation, then the user's variables."""
    reserved = {SECRET_KEY, INDEX_ENV, POD_NAME_ENV, GRACE_ENV}
    clash = reserved & set(env)
    if clash:
        raise ValueError(f"env must not set {', '.join(sorted(clash))}: kubemagic sets it")
    return [
        {
            "name": SECRET_KEY,
            "valueFrom": {"secretKeyRef": {"name": secret_name, "key": SECRET_KEY}},
        },
        {
            "name": INDEX_ENV,
            "valueFrom": {
                "fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}
            },
        },
        {"name": POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ] + [{"name": k, "value": v} for k, v in {**_DEFAULT_ENGINE_ENV, **env}.items()]


def _resources(cpu: str | None, memory: str | None, gpu: int) -> dict[str, Any]:
    """Requests and limits.

    CPU is requested, not limited: a CPU limit throttles bursts (numpy threads) for no
    gain. Memory is requested *and* limited to the same amount, so an engine that
    outgrows it is OOM-killed in its own pod rather than starving the node. GPUs, an
    extended resource, must be given as limits.
    """
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if cpu:
        requests["cpu"] = cpu
    if memory:
        requests["memory"] = limits["memory"] = memory
    if gpu:
        limits["nvidia.com/gpu"] = str(gpu)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into a copy of ``base``.

    Dicts merge recursively. Lists of dicts that all carry a ``name`` (containers, env,
    volumes) merge item by item on that name, like a strategic merge patch, so
    ``{"containers": [{"name": "engine", "volumeMounts": [...]}]}`` adds mounts instead of
    replacing the container. Any other value replaces.
    """
    result = copy.deepcopy(dict(base))
    for key, value in override.items():
        old = result.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            result[key] = deep_merge(old, value)
        elif isinstance(old, list) and _named_list(old) and _named_list(value):
            merged = {item["name"]: item for item in copy.deepcopy(old)}
            for item in value:
                merged[item["name"]] = deep_merge(merged.get(item["name"], {}), item)
            result[key] = list(merged.values())
        else:
            result[key] = copy.deepcopy(value)
    return result


def _named_list(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(i, Mapping) and "name" in i for i in value)
    )
