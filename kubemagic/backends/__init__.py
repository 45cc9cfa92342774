"""Where engines run: the contract between the session and an engine backend.

The session (``kubemagic.session``) never talks to Kubernetes or spawns processes itself.
It asks a backend for a :class:`BackendSpec` — how to configure the ipyparallel controller
and which engine launcher to use — and then drives the launcher through the small,
backend-neutral protocol described by :class:`ScalableEngineLauncher`.

Why a spec and not a subclass of ``ipp.Cluster``: the controller always runs beside the
kernel (same host, same process tree), whatever the backend; only *where engines run* and
*how the controller must be reachable* differ. Keeping that difference in plain data keeps
the session free of backend ``if``s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

#: Environment variable every engine process carries with its stable slot index
#: (0..n-1). Local engines get it from the launcher, Kubernetes engines from the Job's
#: completion index. Scaling down to ``n`` removes the slots ``>= n``.
ENGINE_INDEX_ENV = "KUBEMAGIC_ENGINE_INDEX"


@dataclass
class BackendSpec:
    """Everything the session needs to start a controller and engines for one backend."""

    #: short name shown to users: "local" or "kubernetes"
    name: str
    #: an ipyparallel engine launcher class implementing :class:`ScalableEngineLauncher`
    engine_launcher_class: type
    #: traitlets config applied to the ``ipp.Cluster`` (launcher options live here)
    config: dict[str, Any] = field(default_factory=dict)
    #: interface the controller binds (``0.0.0.0`` when engines are remote)
    controller_ip: str = "127.0.0.1"
    #: address engines are told to connect to (the kernel's reachable address)
    controller_location: str = "127.0.0.1"
    #: extra ``ipcontroller`` arguments (fixed port range, CurveZMQ, ...)
    controller_args: list[str] = field(default_factory=list)
    #: extra ``ipengine`` arguments
    engine_args: list[str] = field(default_factory=list)
    #: whether CurveZMQ is on (sets IPP_ENABLE_CURVE for controller and client)
    curve: bool = False
    #: default number of retries of a chunk whose engine died
    default_retries: int = 0
    #: seconds to wait for the requested engines before failing with diagnostics
    start_timeout: float = 60.0
    #: seconds without a map before the engines are scaled to zero (0: never); a
    #: shared cluster wants its CPUs back, a laptop does not care
    default_idle_timeout: float = 0.0
    #: ask removed engines to shut down (they unregister at once) before the launcher
    #: removes them; off where the platform must see them die otherwise (an Indexed Job
    #: treats a clean exit as a finished slot)
    shutdown_removed_engines: bool = False
    #: frees what keeps other kernels off this spec's controller ports; called (it is
    #: idempotent) once the controller has bound them, and when the session ends
    release_ports: Callable[[], None] = field(default=lambda: None)


@runtime_checkable
class ScalableEngineLauncher(Protocol):
    """What the session needs from an engine launcher, beyond ipyparallel's own API.

    ipyparallel's launchers start a fixed set of engines; kubemagic resizes one set.
    ``start(n)`` (ipyparallel's) starts slots ``0..n-1``; every engine process has
    :data:`ENGINE_INDEX_ENV` set to its slot.
    """

    async def scale(self, n: int) -> None:
        """Make slots ``0..n-1`` exist and remove slots ``>= n``.

        The session drains the engines of the removed slots before calling this, so a
        launcher may terminate them at once. Returns once the change is requested
        (new engines register with the controller later).
        """

    def engine_states(self) -> list[dict[str, Any]]:
        """One dict per slot for the widget: ``index``, ``name``, ``phase``, ``reason``.

        Must be cheap (cached state, no blocking I/O): the widget calls it often.
        """

    async def refusal(self, since: float) -> str | None:
        """Why the platform refuses to create engines requested since ``since`` (epoch
        seconds), e.g. a quota, or None. Polled while the session waits: a refusal ends
        the wait at once with this text instead of a timeout."""

    async def diagnose(self) -> str:
        """Why engines are not (yet) connected, for error messages after a timeout.

        Quotes what the platform knows: pod events, scheduler reasons, last log lines.
        """

    def get_output(self, remove: bool = False) -> str:
        """Recent engine logs (process output or pod logs)."""


def resolve_backend_name(backend: str) -> str:
    """Turn ``"auto"`` into ``"kubernetes"`` or ``"local"``.

    ``auto`` means Kubernetes when in-cluster config or a kubeconfig is usable, else local
    engines — the embedded default when there is no cluster.
    """
    if backend in ("local", "kubernetes"):
        return backend
    if backend != "auto":
        from ..errors import UsageError

        raise UsageError(
            f"unknown backend {backend!r}",
            fix="use --backend local, --backend kubernetes or --backend auto",
        )
    from ..k8s.incluster import kubernetes_config_available

    return "kubernetes" if kubernetes_config_available() else "local"


def make_backend_spec(backend: str, **options: Any) -> BackendSpec:
    """Build the spec for a resolved backend name, validating options eagerly."""
    name = resolve_backend_name(backend)
    if name == "local":
        from .local import local_backend

        return local_backend(**options)
    from ..k8s.backend import kubernetes_backend

    return kubernetes_backend(**options)
