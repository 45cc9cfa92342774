"""The Kubernetes backend's options, declared once: :class:`KubernetesOptions`.

Each field carries its parser, help, flag metavar and consumer (see
:func:`kubemagic.backends.options.option`); the magic's and the CLI's flags, the launcher's traits
(:mod:`.launcher_config`), the launcher settings and Job fields the backend derives
(:mod:`.backend`, :mod:`.launcher`) and the local backend's "only on Kubernetes" error all
come from these fields.

Options arrive three ways — Python keyword arguments, ``%%kubemap`` flags (strings) and
ipyparallel traitlets config — so every parser here accepts both the structured value
(dict, list, int) and the string a flag would carry (``"gpu=true,zone=a"``). Each
rejected value raises one :class:`~kubemagic.errors.UsageError` naming the flag and a
valid example, before anything is created in the cluster. Nothing here talks to the
cluster or imports its client: the magic imports this module to build its flags.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from ..backends.options import option, parse_key_values, parse_options_of, whole_number
from ..errors import UsageError, as_flags
from .manifests import GRACE_ENV, INDEX_ENV, POD_NAME_ENV, SECRET_KEY
from .quantities import cpu_quantity, gpu_count, memory_quantity

#: Controller ports bound on all interfaces, so a NetworkPolicy can allow exactly these.
#: Below Linux's ephemeral range (32768-60999): outgoing connections never occupy them.
DEFAULT_PORT_RANGE = "29100-29199"
#: ipcontroller 9.2 binds 18 sockets with the default scheduler depth (9 of them for
#: engines); a range must hold at least this many ports.
MIN_CONTROLLER_PORTS = 20

#: Variables the engine container gets from kubemagic itself (manifests.py sets the first
#: four; the launcher drops IPP_PROFILE_DIR, a path on the kernel's machine): a user --env
#: of the same name would silently break registration or slots.
RESERVED_ENV = frozenset({SECRET_KEY, INDEX_ENV, POD_NAME_ENV, GRACE_ENV, "IPP_PROFILE_DIR"})

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_PULL_POLICIES = {p.lower(): p for p in ("Always", "IfNotPresent", "Never")}
_EFFECTS = {e.lower(): e for e in ("NoSchedule", "PreferNoSchedule", "NoExecute")}


def parse_tolerations(value: list[dict[str, Any]] | str) -> list[dict[str, Any]]:
    """Tolerations as Kubernetes dicts, or kubectl-taint syntax ``key[=value][:Effect],...``.

    ``"gpu=true:NoSchedule"`` tolerates that taint; ``"gpu:NoSchedule"`` any value of it;
    ``"gpu"`` every effect. A JSON list is accepted too.
    """
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            value = _json("tolerations", text)
        else:
            return [_toleration(part.strip()) for part in text.split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(t, Mapping) for t in value):
        raise UsageError(
            "--tolerations must be a list of toleration dicts",
            fix='e.g. tolerations=[{"key": "gpu", "operator": "Exists"}] or '
            "--tolerations gpu=true:NoSchedule",
        )
    return [dict(t) for t in value]


def _toleration(text: str) -> dict[str, Any]:
    rest, _, effect = text.partition(":")
    key, sep, val = rest.partition("=")
    if not key:
        raise UsageError(
            f"--tolerations {text!r} has no taint key",
            fix="write KEY[=VALUE][:EFFECT], e.g. --tolerations gpu=true:NoSchedule",
        )
    toleration: dict[str, Any] = {"key": key}
    toleration.update({"operator": "Equal", "value": val} if sep else {"operator": "Exists"})
    if effect:
        if effect.lower() not in _EFFECTS:
            raise UsageError(
                f"--tolerations effect {effect!r} is not a taint effect",
                fix="use NoSchedule, PreferNoSchedule or NoExecute",
            )
        toleration["effect"] = _EFFECTS[effect.lower()]
    return toleration


def parse_pod_overrides(value: Mapping[str, Any] | str) -> dict[str, Any]:
    """A partial PodSpec (dict or JSON), deep-merged last into the engine pods' spec.

    A ``metadata`` key patches the pod template's metadata (PodSpec has no such field),
    so annotations such as ``sidecar.istio.io/inject`` can be set. A ``spec`` key is a
    mistake (the dict already *is* the spec) and is rejected rather than silently dropped
    by the API server.
    """
    if isinstance(value, str):
        value = _json("pod_overrides", value)
    if not isinstance(value, Mapping):
        raise UsageError(
            "--pod-overrides must be a dict (a partial pod spec)",
            fix='e.g. pod_overrides={"priorityClassName": "low"}',
        )
    if "spec" in value:
        raise UsageError(
            "--pod-overrides is merged into the pod spec itself; it has no 'spec' key",
            fix='pass the spec\'s fields directly, e.g. {"priorityClassName": "low", '
            '"containers": [{"name": "engine", "volumeMounts": [...]}]}',
        )
    return dict(value)


def parse_port_range(value: str | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``"29100-29199"`` → ``(29100, 29199)``; at least :data:`MIN_CONTROLLER_PORTS` ports."""
    try:
        if isinstance(value, str):
            low_text, _, high_text = value.strip().partition("-")
            low, high = int(low_text), int(high_text)
        else:
            low, high = (int(v) for v in value)
    except (TypeError, ValueError):
        raise UsageError(
            f"--port-range {value!r} is not a port range",
            fix=f"write LOW-HIGH, e.g. --port-range {DEFAULT_PORT_RANGE}",
        ) from None
    if not 1024 <= low <= high <= 65535:
        raise UsageError(
            f"--port-range {value!r} must lie within 1024-65535 with LOW <= HIGH",
            fix=f"e.g. --port-range {DEFAULT_PORT_RANGE}",
        )
    if high - low + 1 < MIN_CONTROLLER_PORTS:
        raise UsageError(
            f"--port-range {value!r} holds {high - low + 1} ports; the controller needs "
            f"{MIN_CONTROLLER_PORTS}",
            fix=f"widen it, e.g. --port-range {low}-{low + MIN_CONTROLLER_PORTS - 1}",
        )
    return low, high


def _json(flag: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(
            f"--{flag.replace('_', '-')} is not valid JSON: {e}", fix="check quotes and brackets"
        ) from None


def _image(value: Any) -> str:
    text = str(value).strip()
    if not text or any(c.isspace() for c in text):
        raise UsageError(f"--image {value!r} is not an image name", fix="e.g. --image python:3.11")
    return text


def _dns_label(flag: str, value: Any) -> str:
    text = str(value)
    if not _DNS_LABEL.match(text):
        raise UsageError(
            f"--{flag.replace('_', '-')} {value!r} is not a valid Kubernetes name",
            fix="use lowercase letters, digits and '-', at most 63 characters",
        )
    return text


def _dns_subdomain(flag: str, value: Any) -> str:
    text = str(value)
    if not _DNS_SUBDOMAIN.match(text):
        raise UsageError(
            f"--{flag.replace('_', '-')} {value!r} is not a valid Kubernetes name",
            fix="use lowercase letters, digits, '-' and '.'",
        )
    return text


def _pull_policy(value: Any) -> str:
    policy = _PULL_POLICIES.get(str(value).lower())
    if policy is None:
        raise UsageError(
            f"--image-pull-policy {value!r} is not a pull policy",
            fix="use Always, IfNotPresent or Never",
        )
    return policy


def _address(value: Any) -> str:
    text = str(value).strip()
    if not text or "://" in text or any(c.isspace() for c in text):
        raise UsageError(
            f"--controller-address {value!r} is not a host name or IP address",
            fix="give the address engine pods can reach, e.g. --controller-address 10.0.0.5",
        )
    return text


def _bool(flag: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    name = as_flags([flag])
    raise UsageError(f"{name} {value!r} is not true or false",
                     fix=f"use {name} or --no-{name[2:]} ({flag}=True or False)")


def _run_as_user(value: Any) -> int | None:
    """The engines' user id; ``None`` (``none`` as a flag) keeps the image's own user, for
    images that need root."""
    if value is None or str(value).strip().lower() == "none":
        return None
    try:
        uid = int(value)
    except (TypeError, ValueError):
        uid = 0
    if uid <= 0:
        raise UsageError(
            f"--run-as-user {value!r} must be a non-root user id (> 0)",
            fix="use --run-as-user 1000, or --run-as-user none (run_as_user=None) to keep "
            "the image's user",
        )
    return uid


@dataclass(frozen=True)
class KubernetesOptions:
    """Checked options; ``None`` means "use the default found in the environment".

    ``layer``: ``manifest`` options become launcher traits of the same name and keyword
    arguments of :func:`.manifests.engine_job`; ``launcher`` ones are used by the launcher
    itself; ``session`` ones shape the controller (:func:`.backend.kubernetes_backend`).
    """

    image: str | None = option(
        parse=_image, metavar="IMAGE", layer="launcher",
        help="engine image (default: the notebook's own); it must have kubemagic installed")
    namespace: str | None = option(
        parse=partial(_dns_label, "namespace"), metavar="NS", layer="launcher",
        help="namespace of the engine Job (default: the service account's, else the "
        "kubeconfig context's)")
    cpu: str | None = option(
        parse=cpu_quantity, metavar="Q", layer="manifest",
        help="CPU request per engine, e.g. 500m or 2")
    memory: str | None = option(
        parse=memory_quantity, metavar="Q", layer="manifest",
        help="memory request and limit per engine, e.g. 1Gi")
    gpu: int = option(
        parse=gpu_count, metavar="N", layer="manifest", default=0,
        help="nvidia.com/gpu per engine")
    node_selector: dict[str, str] = option(
        parse=partial(parse_key_values, "node_selector"), metavar="KEY=VALUE[,...]",
        layer="manifest", default={},
        help="node labels the engine pods must run on, e.g. gpu=true")
    tolerations: list[dict[str, Any]] = option(
        parse=parse_tolerations, metavar="KEY[=VALUE][:EFFECT][,...]", layer="manifest",
        default=[], help="taints the engine pods tolerate, e.g. gpu=true:NoSchedule (or a "
        "JSON list)")
    env: dict[str, str] = option(
        parse=partial(parse_key_values, "env", env_names=True, reserved=RESERVED_ENV),
        metavar="NAME=VALUE[,...]", layer="launcher", default={}, target="environment",
        help="extra environment variables of the engines")
    service_account: str | None = option(
        parse=partial(_dns_subdomain, "service_account"), metavar="NAME", layer="manifest",
        help="service account of the engine pods, whose token they get (default: none)")
    image_pull_policy: str | None = option(
        parse=_pull_policy, metavar="POLICY", layer="manifest",
        help="Always, IfNotPresent or Never")
    pod_overrides: dict[str, Any] = option(
        parse=parse_pod_overrides, metavar="JSON", layer="manifest", default={},
        help="partial pod spec merged last into the engine pods' spec (a 'metadata' key "
        "patches their metadata)")
    run_as_user: int | None = option(
        parse=_run_as_user, metavar="UID", layer="manifest", default=1000, nullable=True,
        help="non-root user id of the engines (default 1000); none keeps the image's user")
    active_deadline_seconds: int | None = option(
        parse=partial(whole_number, name="--active-deadline-seconds",
                      fix="give a positive whole number of seconds, e.g. "
                      "--active-deadline-seconds 3600"),
        metavar="S",
        layer="manifest", help="fail the engine Job after S seconds")
    lease_seconds: int = option(
        parse=partial(whole_number, name="--lease-seconds", minimum=0,
                      fix="give whole seconds, e.g. --lease-seconds 120 (0: no lease)"),
        metavar="S", layer="manifest", default=120,
        help="the engine Job expires S seconds after the kernel last renewed it, so a "
        "dead kernel's Job, pods and Secret are removed whatever their state (default "
        "120; 0: no lease)")
    spread: bool = option(
        parse=partial(_bool, "spread"), layer="manifest", default=True,
        help="prefer spreading engine pods over nodes, so one lost node does not take the "
        "whole fleet (default on)")
    node_loss_seconds: int = option(
        parse=partial(whole_number, name="--node-loss-seconds", minimum=0,
                      fix="give whole seconds, e.g. --node-loss-seconds 10"),
        metavar="S", layer="manifest", default=10,
        help="evict engines of a node that is not ready or unreachable after S seconds "
        "(Kubernetes' default is 300) and replace them on the nodes that answer")
    # 30 s, Kubernetes' own default, which evictions and `kubectl drain` honour: room for
    # the running item of a busy engine to finish before it hands the rest of its work back
    # (map items usually take far less). An idle engine still exits at once, so stopping
    # and scaling down do not wait for it; an item that outlives it is lost with its chunk
    # and re-run, as for a lost pod.
    termination_grace_period_seconds: int = option(
        parse=partial(whole_number, name="--termination-grace-period-seconds", minimum=1,
                      fix="give whole seconds, e.g. --termination-grace-period-seconds 30"),
        metavar="S", layer="manifest", default=30,
        help="seconds an engine pod gets between SIGTERM (deleted, evicted, drained) and "
        "SIGKILL to finish its running item and hand the rest back (default 30)")
    controller_address: str | None = option(
        parse=_address, metavar="ADDR", layer="session",
        help="address engines use to reach the controller (default: detected)")
    port_range: tuple[int, int] = option(
        parse=parse_port_range, metavar="LOW-HIGH", layer="session",
        default=parse_port_range(DEFAULT_PORT_RANGE),
        help=f"controller ports engines connect to (default {DEFAULT_PORT_RANGE})")
    curve: bool = option(
        parse=partial(_bool, "curve"), layer="session", default=True,
        help="CurveZMQ encryption of the engines' traffic (default on)")
    kubeconfig: str | None = option(
        parse=str, metavar="FILE", layer="launcher",
        help="kubeconfig file (default: in-cluster config, else $KUBECONFIG)")
    context: str | None = option(
        parse=str, metavar="NAME", layer="launcher", help="kubeconfig context")


def parse_options(**options: Any) -> KubernetesOptions:
    """Check every option; raise one :class:`UsageError` for the first bad one."""
    return parse_options_of(KubernetesOptions, "kubernetes", options)
