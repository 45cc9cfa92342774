"""Why engines are not connected, in words a user can act on — a pure function of what the
API reported (pods, events, log tails, the Job's conditions).

This text is the body of the error raised when start-up times out, so it quotes the
platform verbatim (scheduler messages, image pull errors, engine log lines) and adds one
"fix:" line per kind of problem. Keeping it pure lets the tests feed recorded pods and
check the wording without a cluster.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .manifests import EXIT_CONTROLLER_GONE, EXIT_CONTROLLER_SILENT, EXIT_TERMINATED
from .podstate import PodState, job_end, pod_state, slot_states

#: Engine log lines that show how far registration got (ipyparallel 9.2 wording).
_REGISTERING = "Registering with controller at"
_REGISTERED = "Completed registration"
_MAX_LOG_LINES = 8


#: Fixes for unschedulable pods, by a phrase of the scheduler's message; first match wins.
_SCHEDULING_FIXES = [
    (
        "nvidia.com/gpu",
        "no node has that many free nvidia.com/gpu: lower --gpu, or add GPU nodes "
        "(with the NVIDIA device plugin)",
    ),
    (
        "Insufficient cpu",
        "no node has that much free CPU: lower --cpu, use fewer engines, or add nodes",
    ),
    (
        "Insufficient memory",
        "no node has that much free memory: lower --memory, use fewer engines, or add nodes",
    ),
    (
        "node affinity/selector",
        "no node matches --node-selector: check the labels (kubectl get nodes --show-labels)",
    ),
    ("taint", "the nodes are tainted: add matching --tolerations"),
    ("", "the scheduler cannot place the engine pods; see its message above"),
]
_IMAGE_FIX = (
    "check that --image exists and the node may pull it "
    "(private registry: add imagePullSecrets via pod_overrides)"
)
#: Fixes by the reason of a waiting or terminated container.
_REASON_FIXES = {
    "ErrImageNeverPull": "the image is not on the node and imagePullPolicy is Never: "
    "load it there, or use --image-pull-policy IfNotPresent",
    "ImagePullBackOff": _IMAGE_FIX,
    "ErrImagePull": _IMAGE_FIX,
    "InvalidImageName": _IMAGE_FIX,
    "CreateContainerConfigError": "the pod's configuration is incomplete (see the message); "
    "the connection Secret may have been deleted",
    "OOMKilled": "the engine ran out of memory: raise --memory",
}


def hint(state: PodState, controller_url: str = "") -> str:
    """A one-line fix for a pod's problem, or "" when the state needs none."""
    if state.reason == "Unschedulable" or "nodes are available" in state.message:
        return next(fix for phrase, fix in _SCHEDULING_FIXES if phrase in state.message)
    if state.exit_code == EXIT_CONTROLLER_GONE:
        return unreachable(controller_url)
    if state.exit_code == EXIT_CONTROLLER_SILENT:
        return ("the engine lost touch with a controller that still answered (a lost "
                "packet, a machine too busy); the Job replaced it. If it repeats, check "
                "the network between pods and the kernel, or start fewer engines")
    if state.exit_code == EXIT_TERMINATED:
        return ""  # stopped on purpose (deleted, evicted, scaled away): nothing to fix
    if state.reason in _REASON_FIXES:
        return _REASON_FIXES[state.reason]
    if state.phase == "Failed":
        return (
            "the engine process failed: see its output above (is kubemagic installed in --image?)"
        )
    return ""


def unreachable(controller_url: str) -> str:
    """The fix for engines that cannot reach (or lost) the controller."""
    return (
        f"engines cannot reach the controller at {controller_url or '?'} (or lost it): check "
        "that --controller-address is reachable from pods (firewall; NetworkPolicy: "
        "`kubemagic rbac` prints one)"
    )


def registration_problem(log: str) -> str | None:
    """The engine's last log lines when its log shows it never completed registration."""
    if not log or _REGISTERED in log:
        return None
    return tail(log)


def tail(text: str, lines: int = _MAX_LOG_LINES) -> str:
    """The last ``lines`` non-empty lines of ``text``."""
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def _quote(text: str, indent: str = "      | ") -> str:
    return "\n".join(indent + line for line in tail(text).splitlines())


def _registration_url(log: str) -> str:
    match = re.search(rf"{_REGISTERING} (\S+)", log)
    return match[1] if match else ""


def explain(
    *,
    job_name: str,
    namespace: str,
    n: int,
    job: Mapping[str, Any] | None,
    pods: Iterable[Mapping[str, Any]],
    events: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    logs: Mapping[str, str] | None = None,
    controller_url: str = "",
) -> str:
    """Describe the engine Job's state for a start-up timeout or a failed Job.

    ``pods`` may include pods that no longer exist (their last known state): failed pods
    are removed quickly by ``ttlSecondsAfterFinished``, but their exit code and log tail
    are the explanation. ``events`` maps object names (pods, the Job) to their events;
    ``logs`` maps pod names to log tails of running pods.
    """
    pods = [dict(p) for p in pods]
    events = events or {}
    logs = logs or {}
    slots = slot_states(pods, n)
    running = sum(1 for s in slots if s.phase == "Running")
    lines = [
        f"Kubernetes Job {job_name} in namespace {namespace}: {running} of {n} engine pods running."
    ]
    if job is None:
        lines.append("  The Job no longer exists (stopped, or failed and removed by its ttl).")
    else:
        end = job_end(job)
        if end is not None and end.failed:
            lines.append(f"  Job failed — {end.reason}: {end.message}")
        if (job.get("spec") or {}).get("suspend"):
            lines.append("  The Job is suspended (scaled to 0 engines).")

    hints: list[str] = []
    for state in slots:
        lines.append(_describe(state))
        log = logs.get(state.name, "")
        if state.phase == "Running" and log:
            stuck = registration_problem(log)
            if stuck is not None:
                url = _registration_url(log) or controller_url
                lines.append(
                    f"      running, but has not registered with the controller at {url or '?'}; "
                    "last log lines:"
                )
                lines.append(_quote(stuck))
                hints.append(unreachable(url))
        for event in _warnings(events.get(state.name, [])):
            lines.append(f"      event {event}")
        fix = hint(state, controller_url)
        if fix:
            hints.append(fix)

    current = {s.name for s in slots}
    failed = [s for s in map(pod_state, pods) if s.phase == "Failed" and s.name not in current]
    seen: set[str] = set()
    for state in failed:
        key = f"{state.exit_code}|{state.message}"
        if key in seen:
            continue
        seen.add(key)
        lines.append(
            f"  earlier pod {state.name} (engine {state.index}) failed"
            + (f" with exit code {state.exit_code}" if state.exit_code is not None else "")
            + (f" ({state.reason})" if state.reason else "")
            + (":" if state.message else "")
        )
        if state.message:
            lines.append(_quote(state.message))
        fix = hint(state, controller_url)
        if fix:
            hints.append(fix)

    for event in _warnings(events.get(job_name, [])):
        lines.append(f"  Job event {event}")
        if "forbidden" in event or "exceeded quota" in event:
            hints.append(
                "the namespace's policy refuses the engine pods (quota or PodSecurity): "
                "see the Job event"
            )

    for fix in dict.fromkeys(hints):
        lines.append(f"  fix: {fix}")
    return "\n".join(lines)


def _describe(state: PodState) -> str:
    head = f"  engine {state.index}: {state.phase}"
    if state.reason:
        head += f" — {state.reason}"
    if state.exit_code is not None:
        head += f" (exit code {state.exit_code})"
    if state.name:
        head += f"  [pod {state.name}" + (f" on {state.node}" if state.node else "") + "]"
    if state.message and state.phase != "Failed":
        head += f": {state.message}"
    elif state.message:
        head += ":\n" + _quote(state.message)
    return head


def _warnings(events: Iterable[Mapping[str, Any]]) -> list[str]:
    """Distinct Warning events, newest last, as "Reason: message"."""
    out: list[str] = []
    for event in sorted(events, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or ""):
        if event.get("type") != "Warning":
            continue
        text = f"{event.get('reason')}: {(event.get('message') or '').strip()}"
        if text not in out:
            out.append(text)
    return out[-3:]


def refusal(events: Iterable[Mapping[str, Any]], since: float) -> str | None:
    """The newest reason the API refused to create an engine pod after ``since`` (epoch
    seconds): a ResourceQuota or admission message quoted from the Job's FailedCreate
    events, or None. Such a refusal does not go away by waiting, so the session fails
    at once with it instead of waiting out the start timeout."""
    newest: tuple[float, str] | None = None
    for event in events:
        if event.get("reason") != "FailedCreate":
            continue
        message = str(event.get("message") or "")
        if "exceeded quota" not in message and "forbidden" not in message:
            continue
        when = _timestamp(event.get("lastTimestamp") or event.get("eventTime")
                          or (event.get("metadata") or {}).get("creationTimestamp"))
        if when >= since and (newest is None or when >= newest[0]):
            newest = (when, message)
    return newest[1] if newest else None


def _timestamp(value: Any) -> float:
    """RFC 3339 (``2026-11-29T08:00:00Z`` or with microseconds) to epoch seconds; 0 if absent."""
    from datetime import datetime

    if not value:
        return 0.0
    text = str(value).replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0
