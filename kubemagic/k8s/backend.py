"""``kubernetes_backend(**options)``: check everything that can be checked before any engine
exists, then describe the controller and launcher configuration as a :class:`BackendSpec`.

Eager on purpose. A typo in ``--memory``, a namespace that does not exist, a service
account without rights, a missing image or an address pods cannot reach would otherwise
surface as engines that never register — a silent hang until a timeout. Here each
becomes one error naming the problem and its fix, before the controller starts.
"""

from __future__ import annotations

from typing import Any

from traitlets.config import Config

from ..backends import BackendSpec
from ..backends.options import layer_values
from ..config import settings
from ..errors import UsageError
from . import incluster, queries
from .client import Api, api_call, connect, namespace_missing, namespaced
from .launcher import KubernetesEngineSetLauncher
from .options import KubernetesOptions, parse_options
from .permissions import check_permissions
from .ports import claim_port_window

#: Retries of a chunk whose engine died: pods get evicted and preempted.
DEFAULT_RETRIES = 2
#: Seconds the session waits for engines when the cell gives no --start-timeout: pulling
#: an image and scheduling pods take longer than starting processes.
DEFAULT_START_TIMEOUT = 120.0


def kubernetes_backend(**options: Any) -> BackendSpec:
    """Validate ``options`` (see :class:`~.options.KubernetesOptions`) against the cluster and
    return the spec the session starts the controller and engines from.

    Raises :class:`~kubemagic.errors.UsageError` (bad option, missing namespace, image or
    address), :class:`~kubemagic.errors.PermissionDenied` (missing RBAC rules, all named) or
    :class:`~kubemagic.errors.StartupError` (no cluster configuration, API unreachable).
    """
    site = settings().kubernetes_defaults()
    opts = parse_options(**{**site, **{k: v for k, v in options.items() if v is not None}})
    api = connect(opts.kubeconfig, opts.context)
    namespace = opts.namespace or incluster.default_namespace(opts.kubeconfig, opts.context)
    check_namespace(api, namespace)
    check_permissions(api, namespace)
    address = resolve_controller_address(opts)
    launcher_config = _launcher_config(opts, namespace)
    launcher = KubernetesEngineSetLauncher(
        config=Config({"KubernetesEngineSetLauncher": launcher_config}), job_name="kubemagic-check"
    )
    launcher.api = api
    launcher_config["image"] = launcher.resolve_image(launcher.options())
    check_job_schema(launcher, launcher_config["image"])
    claim = claim_port_window(*opts.port_range)  # last: nothing after it can fail
    ports = claim.ports
    return BackendSpec(
        name="kubernetes",
        default_idle_timeout=1800.0,
        engine_launcher_class=KubernetesEngineSetLauncher,
        surge_lost_engines=True,
        config=Config({"KubernetesEngineSetLauncher": launcher_config}),
        controller_ip="0.0.0.0",
        controller_location=address,
        # engine-facing sockets are bound first, so they take the window's first ports
        controller_args=[f"--IPController.ports={ports[0]}-{ports[-1]}"],
        curve=opts.curve,
        default_retries=DEFAULT_RETRIES,
        start_timeout=DEFAULT_START_TIMEOUT,
        release_ports=claim.release,
    )


def check_namespace(api: Api, namespace: str) -> None:
    """Fail clearly on a namespace that does not exist.

    :func:`.queries.namespace_state` answers as ``kubemagic doctor`` does; when it cannot
    tell (a service account that may neither read the namespace nor create Secrets in it),
    the permission check that follows speaks for the namespace instead.
    """
    with api_call("get", "namespaces"):
        state = queries.namespace_state(api, namespace)
    if state is queries.NamespaceState.MISSING:
        raise namespace_missing(namespace)


def resolve_controller_address(opts: KubernetesOptions) -> str:
    """Where engines connect: ``--controller-address``, ``$KUBEMAGIC_CONTROLLER_ADDRESS``,
    else detected (pod IP in a cluster; see :func:`.incluster.detect_controller_address`)."""
    address = incluster.controller_address(opts.controller_address, opts.kubeconfig, opts.context)
    if not address:
        raise UsageError(
            "cannot tell which address of this machine engine pods can reach",
            fix="pass --controller-address <IP or name of this machine, reachable from pods> "
            f"(or set ${incluster.CONTROLLER_ADDRESS_ENV})",
        )
    if incluster.is_loopback(address):
        raise UsageError(
            f"controller address {address!r} is loopback: engine pods cannot connect to it",
            fix="pass --controller-address with this machine's address as pods see it",
        )
    return address


def _launcher_config(opts: KubernetesOptions, namespace: str) -> dict[str, Any]:
    """The options the launcher carries, as ``KubernetesEngineSetLauncher`` traits (see
    :mod:`.launcher_config`), with the namespace resolved."""
    return {**layer_values(opts, "launcher", "manifest"), "namespace": namespace}


def check_job_schema(launcher: KubernetesEngineSetLauncher, image: str) -> None:
    """Have the API server validate the Job that ``start`` will create (a dry run, strict
    about unknown fields), so a bad ``pod_overrides`` fails at the cell that set it."""
    job = launcher.job_manifest(launcher.options(), image)
    job["metadata"]["generateName"] = job["metadata"].pop("name") + "-"
    with api_call("create", "jobs.batch", launcher.namespace):
        launcher.api.request(
            "POST",
            namespaced(launcher.namespace, "jobs", group="batch/v1"),
            query={"dryRun": "All", "fieldValidation": "Strict"},
            body=job,
        )
