"""What an engine pod is doing, in one line: phase, reason, message — from the raw pod dict;
and whether a Job has ended, from its conditions.

A pod's status spreads its story over phase, conditions and container states; the
widget needs "Pending — Unschedulable: 0/1 nodes are available: 1 Insufficient cpu" and
the error after a timeout needs the same. Pure functions over API dicts (camelCase, as
the API sends them), so they are tested with recorded pods and Jobs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .manifests import (
    COMPLETION_INDEX_ANNOTATION,
    ENGINE_CONTAINER,
    EXIT_CONTROLLER_GONE,
    EXIT_TERMINATED,
)


@dataclass(frozen=True)
class PodState:
    """One engine pod's condensed status."""

    #: completion index = engine slot (None if the pod lacks the annotation)
    index: int | None
    #: pod name ("" for a slot whose pod the Job has not created yet)
    name: str
    #: Pending, Running, Succeeded, Failed, Terminating or Unknown
    phase: str
    #: short cause: Unschedulable, ContainerCreating, ImagePullBackOff, OOMKilled, ...
    reason: str = ""
    #: the platform's own words about it (scheduler message, pull error, log tail)
    message: str = ""
    exit_code: int | None = None
    node: str = ""
    created: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The dict shape of :meth:`ScalableEngineLauncher.engine_states`."""
        return asdict(self)


def pod_index(pod: Mapping[str, Any]) -> int | None:
    """The pod's completion index, from the annotation the Job controller sets."""
    meta = pod.get("metadata") or {}
    value = (meta.get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION)
    if value is None:
        value = (meta.get("labels") or {}).get(COMPLETION_INDEX_ANNOTATION)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _engine_status(status: Mapping[str, Any]) -> Mapping[str, Any]:
    statuses = status.get("containerStatuses") or []
    return next(
        (c for c in statuses if c.get("name") == ENGINE_CONTAINER), statuses[0] if statuses else {}
    )


def pod_state(pod: Mapping[str, Any]) -> PodState:
    """Condense one pod (an API dict) into a :class:`PodState`."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    phase = status.get("phase") or "Unknown"
    container = _engine_status(status)
    state = container.get("state") or {}
    base = {
        "index": pod_index(pod),
        "name": meta.get("name", ""),
        "node": (pod.get("spec") or {}).get("nodeName") or "",
        "created": meta.get("creationTimestamp") or "",
    }

    terminated = state.get("terminated")
    if phase in ("Failed", "Succeeded") or terminated:
        terminated = terminated or {}
        return PodState(
            phase=phase if phase in ("Failed", "Succeeded") else "Terminating",
            reason=status.get("reason") or terminated.get("reason") or "",
            message=(status.get("message") or terminated.get("message") or "").strip(),
            exit_code=terminated.get("exitCode"),
            **base,
        )
    if meta.get("deletionTimestamp"):
        return PodState(phase="Terminating", reason="Deleting", **base)
    if phase == "Pending":
        scheduled: Mapping[str, Any] = next(
            (c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), {}
        )
        if scheduled.get("status") == "False":
            return PodState(
                phase=phase,
                reason=scheduled.get("reason") or "Unschedulable",
                message=scheduled.get("message") or "",
                **base,
            )
        waiting = state.get("waiting") or {}
        if waiting:
            return PodState(
                phase=phase,
                reason=waiting.get("reason") or "",
                message=waiting.get("message") or "",
                **base,
            )
        return PodState(phase=phase, reason="Scheduled" if base["node"] else "", **base)
    return PodState(phase=phase, reason=status.get("reason") or "", **base)


def termination(pod: Mapping[str, Any]) -> tuple[str, int | None, str] | None:
    """How the pod's engine container ended: the kubelet's reason (``OOMKilled``,
    ``Error``), the exit code and the container's memory limit ("" when none); None while
    it has not ended."""
    container = _engine_status(pod.get("status") or {})
    ended = (container.get("state") or {}).get("terminated")
    if not ended:
        return None
    spec = next((c for c in (pod.get("spec") or {}).get("containers") or []
                 if c.get("name") == ENGINE_CONTAINER), {})
    limit = ((spec.get("resources") or {}).get("limits") or {}).get("memory") or ""
    return ended.get("reason") or "", ended.get("exitCode"), str(limit)


def slot_states(pods: Iterable[Mapping[str, Any]], n: int) -> list[PodState]:
    """One state per slot ``0..n-1``: the slot's newest pod, or "NotCreated".

    A slot can have several pods (a failed one and its replacement); the newest tells
    what the slot is doing now.
    """
    newest: dict[int, PodState] = {}
    for pod in pods:
        state = pod_state(pod)
        if state.index is None or state.index >= n:
            continue
        old = newest.get(state.index)
        if old is None or state.created >= old.created:
            newest[state.index] = state
    return [
        newest.get(i)
        or PodState(
            index=i,
            name="",
            phase="Pending",
            reason="NotCreated",
            message="the Job has not created this pod yet",
        )
        for i in range(n)
    ]


def crash(pod: Mapping[str, Any]) -> PodState | None:
    """The pod's state when its engine failed on its own (an error, an OOM kill), else None.

    Not a crash: a pod still running; one someone deleted (scaled away, signalled, killed
    by hand: it has a deletion timestamp or exited :data:`~.manifests.EXIT_TERMINATED`);
    one disrupted by the platform (eviction, preemption: ``DisruptionTarget``); and an
    engine that lost its controller (:data:`~.manifests.EXIT_CONTROLLER_GONE` fails the
    whole Job, which says so itself).
    """
    state = pod_state(pod)
    if state.phase != "Failed" or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return None
    conditions = ((pod.get("status") or {}).get("conditions")) or []
    if any(c.get("type") == "DisruptionTarget" and c.get("status") == "True" for c in conditions):
        return None
    if state.exit_code in (EXIT_TERMINATED, EXIT_CONTROLLER_GONE):
        return None
    return state


def lost_with_node(pod: Mapping[str, Any]) -> bool:
    """True when the pod's node stopped answering and the pod can never end by itself.

    The node's controller, not its kubelet, marked it not ready: ``Ready`` is False while
    ``ContainersReady`` is still True (the kubelet sets both together; the node lifecycle
    controller flips only ``Ready`` when the node's heartbeats stop). And the taint manager
    is deleting it for the node's ``unreachable``/``not-ready`` taint (``DisruptionTarget``,
    ``DeletionByTaintManager``), after the engines' short toleration. Such a pod stays
    Terminating while the Node object exists — only its kubelet could end it — and a Job
    with a pod failure policy replaces only Failed pods.
    """
    if not (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    if status.get("phase") not in ("Running", "Pending"):
        return False
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    disruption = conditions.get("DisruptionTarget") or {}
    return (disruption.get("status") == "True"
            and disruption.get("reason") == "DeletionByTaintManager"
            and (conditions.get("Ready") or {}).get("status") == "False"
            and (conditions.get("ContainersReady") or {}).get("status") == "True")


def runs(pod: Mapping[str, Any]) -> bool:
    """True while the pod runs as far as its kubelet says: Running, not being deleted, and
    ready (the node's controller turns ``Ready`` off when the kubelet goes silent)."""
    status = pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or [])
    return (status.get("phase") == "Running" and ready
            and not (pod.get("metadata") or {}).get("deletionTimestamp"))


#: Seconds past a pod's deletion deadline after which its kubelet is taken to be gone: a
#: kubelet that answers kills the containers at the deadline and reports at once.
OVERDUE_S = 15.0


def deletion_overdue(pod: Mapping[str, Any], seconds_past_deadline: float) -> bool:
    """True for a pod still Running or Pending :data:`OVERDUE_S` after its deletion deadline
    (its ``deletionTimestamp``, the end of its grace period): nobody will end it but its
    kubelet, which no longer answers. This also catches what :func:`lost_with_node` cannot:
    pods of a lost node that were still starting (never ready), or that were deleted before
    the node went."""
    if not (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return ((pod.get("status") or {}).get("phase") in ("Running", "Pending")
            and seconds_past_deadline > OVERDUE_S)


def crash_loop_size(n: int) -> int:
    """Crashes soon after the start that mean the engines cannot start at all: half the
    slots' worth, at least two. Engines that crash deterministically (an import error, a
    bad image, a start-up script) fail in every slot within seconds; a few unlucky pods of
    a large set do not stop it, and one crash alone is retried."""
    return max(2, (n + 1) // 2)


@dataclass(frozen=True)
class JobEnd:
    """How a Job ended (or is decided to end): the terminal condition, condensed."""

    #: True for a failed Job (Failed, FailureTarget), False for a completed one
    failed: bool
    #: the Job controller's short cause, e.g. PodFailurePolicy, DeadlineExceeded
    reason: str = ""
    message: str = ""


#: Terminal Job conditions, final ones first. Since Kubernetes 1.31 the Job controller
#: sets FailureTarget (or SuccessCriteriaMet) as soon as the outcome is decided, while pods
#: may still be terminating, and Failed (Complete) once they are gone: the outcome is
#: known from the first, and the final one says the same when both are present.
_TERMINAL = (
    ("Failed", True),
    ("Complete", False),
    ("FailureTarget", True),
    ("SuccessCriteriaMet", False),
)


def job_end(job: Mapping[str, Any] | None) -> JobEnd | None:
    """The Job's outcome from its true terminal condition, or None while it runs.

    The one reading of Job conditions: ``kubemagic ls`` shows it, diagnostics quote it, and
    the launcher stops on it, so none of them can disagree about when a Job is over.
    """
    conditions = {
        c.get("type"): c
        for c in ((job or {}).get("status") or {}).get("conditions") or []
        if c.get("status") == "True"
    }
    for kind, failed in _TERMINAL:
        cond = conditions.get(kind)
        if cond is not None:
            return JobEnd(
                failed=failed,
                reason=cond.get("reason") or "",
                message=(cond.get("message") or "").strip(),
            )
    return None
