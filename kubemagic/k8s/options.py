"""The Kubernetes backend's options: parsed and checked without touching the cluster.

Options arrive three ways — Python keyword arguments, ``%%kubemap`` flags (strings) and
ipyparallel traitlets config — so every parser here accepts both the structured value
(dict, list, int) and the string a flag would carry (``"gpu=true,zone=a"``). Each
rejected value raises one :class:`~kubemagic.errors.UsageError` naming the flag and a
valid example, before anything is created in the cluster.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError
from .manifests import INDEX_ENV, POD_NAME_ENV, SECRET_KEY
from .quantities import cpu_quantity, gpu_count, memory_quantity

#: Controller ports bound on all interfaces, so a NetworkPolicy can allow exactly these.
#: Below Linux's ephemeral range (32768-60999): outgoing connections never occupy them.
DEFAULT_PORT_RANGE = "29100-29199"
#: ipcontroller 9.2 binds 18 sockets with the default scheduler depth (9 of them for
#: engines); a range must hold at least this many ports.
MIN_CONTROLLER_PORTS = 20

#: Variables the engine container gets from kubemagic itself (manifests.py sets the first
#: three; the launcher drops IPP_PROFILE_DIR, a path on the kernel's machine): a user --env
#: of the same name would silently break registration or slots.
RESERVED_ENV = frozenset({SECRET_KEY, INDEX_ENV, POD_NAME_ENV, "IPP_PROFILE_DIR"})

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_PULL_POLICIES = {p.lower(): p for p in ("Always", "IfNotPresent", "Never")}
_EFFECTS = {e.lower(): e for e in ("NoSchedule", "PreferNoSchedule", "NoExecute")}


@dataclass(frozen=True)
class KubernetesOptions:
    """Validated options; ``None`` means "use the default found in the environment"."""

    image: str | None = None
    namespace: str | None = None
    cpu: str | None = None
    memory: str | None = None
    gpu: int = 0
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    service_account: str | None = None
    image_pull_policy: str | None = None
    pod_overrides: dict[str, Any] = field(default_factory=dict)
    controller_address: str | None = None
    port_range: tuple[int, int] = (29100, 29199)
    curve: bool = True
    active_deadline_seconds: int | None = None
    start_timeout: float = 120.0
    kubeconfig: str | None = None
    context: str | None = None
    run_as_user: int | None = 1000


OPTION_NAMES = tuple(KubernetesOptions.__dataclass_fields__)


def parse_options(**options: Any) -> KubernetesOptions:
    """Check every option; raise one :class:`UsageError` for the first bad one."""
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise UsageError(
            f"unknown Kubernetes option(s): {', '.join(unknown)}",
            fix=f"valid options are: {', '.join(OPTION_NAMES)}",
        )
    o = {k: v for k, v in options.items() if v is not None}
    return KubernetesOptions(
        image=_image(o["image"]) if "image" in o else None,
        namespace=_dns_label("namespace", o["namespace"]) if "namespace" in o else None,
        cpu=cpu_quantity(o["cpu"]) if "cpu" in o else None,
        memory=memory_quantity(o["memory"]) if "memory" in o else None,
        gpu=gpu_count(o.get("gpu")),
        node_selector=parse_key_values("node_selector", o.get("node_selector", {})),
        tolerations=parse_tolerations(o.get("tolerations", [])),
        env=parse_key_values("env", o.get("env", {}), env_names=True),
        service_account=(
            _dns_subdomain("service_account", o["service_account"])
            if "service_account" in o
            else None
        ),
        image_pull_policy=_pull_policy(o["image_pull_policy"])
        if "image_pull_policy" in o
        else None,
        pod_overrides=parse_pod_overrides(o.get("pod_overrides", {})),
        controller_address=_address(o["controller_address"]) if "controller_address" in o else None,
        port_range=parse_port_range(o.get("port_range", DEFAULT_PORT_RANGE)),
        curve=_bool("curve", o.get("curve", True)),
        active_deadline_seconds=_positive_int(
            "active_deadline_seconds", o["active_deadline_seconds"]
        )
        if "active_deadline_seconds" in o
        else None,
        start_timeout=_positive_float("start_timeout", o.get("start_timeout", 120.0)),
        kubeconfig=str(o["kubeconfig"]) if "kubeconfig" in o else None,
        context=str(o["context"]) if "context" in o else None,
        run_as_user=_run_as_user(options.get("run_as_user", 1000)),
    )


def parse_key_values(
    flag: str, value: Mapping[str, Any] | str | list[str], *, env_names: bool = False
) -> dict[str, str]:
    """``{"a": "1"}``, ``"a=1,b=2"`` or ``["a=1", "b=2"]`` → ``{"a": "1", "b": "2"}``."""
    if isinstance(value, Mapping):
        pairs = [(str(k), v) for k, v in value.items()]
    else:
        items = value.split(",") if isinstance(value, str) else list(value)
        pairs = []
        for item in (i.strip() for i in items):
            if not item:
                continue
            key, sep, val = item.partition("=")
            if not sep or not key:
                raise UsageError(
                    f"--{flag.replace('_', '-')} {item!r} is not KEY=VALUE",
                    fix=f"write --{flag.replace('_', '-')} KEY=VALUE[,KEY2=VALUE2]",
                )
            pairs.append((key.strip(), val))
    result: dict[str, str] = {}
    for key, val in pairs:
        if env_names and not re.match(r"^[A-Za-z_][A-Za-z0-9_.-]*$", key):
            raise UsageError(
                f"--env name {key!r} is not a valid environment variable name",
                fix="use letters, digits and underscores, e.g. --env OMP_NUM_THREADS=1",
            )
        if env_names and key in RESERVED_ENV:
            raise UsageError(
                f"--env {key} is set by kubemagic for every engine and cannot be overridden",
                fix=f"drop {key} from --env (reserved: {', '.join(sorted(RESERVED_ENV))})",
            )
        result[key] = str(val)
    return result


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
    raise UsageError(f"--{flag} {value!r} is not true or false", fix=f"use --{flag} true/false")


def _positive_int(flag: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number <= 0:
        raise UsageError(
            f"--{flag.replace('_', '-')} {value!r} must be a positive whole number of seconds",
            fix=f"e.g. --{flag.replace('_', '-')} 3600",
        )
    return number


def _positive_float(flag: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = 0.0
    if not number > 0:
        raise UsageError(
            f"--{flag.replace('_', '-')} {value!r} must be a positive number of seconds",
            fix=f"e.g. --{flag.replace('_', '-')} 120",
        )
    return number


def _run_as_user(value: Any) -> int | None:
    """The engines' user id; ``None`` keeps the image's own user (for images that need root)."""
    if value is None:
        return None
    try:
        uid = int(value)
    except (TypeError, ValueError):
        uid = 0
    if uid <= 0:
        raise UsageError(
            f"run_as_user {value!r} must be a non-root user id (> 0)",
            fix="use run_as_user=1000, or run_as_user=None to keep the image's user",
        )
    return uid
