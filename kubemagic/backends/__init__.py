"""Where engines run: the contract between the session and an engine backend.

The session (``kubemagic.session``) never talks to Kubernetes or spawns processes itself.
It asks a backend for a :class:`BackendSpec` — how to configure the ipyparallel controller
and which engine launcher to use — and then drives the launcher through the small,
backend-neutral protocol described by :class:`ScalableEngineLauncher`.

Why a spec and not a subclass of ``ipp.Cluster``: the controller always runs beside the
kernel (same host, same process tree), whatever the backend; only *where engines run* and
*how the controller must be reachable* differ. Keeping that difference in plain data keeps
the session free of backend ``if``s.

Backends are found the way ipyparallel finds its launchers: each entry point of the
``kubemagic.backends`` group names a :class:`Backend`. Nothing here knows which backends
exist, so a new backend is an entry point, not an edit of this package. Each declares its
options once, as the fields of a dataclass (:mod:`.options` says how, and derives the
magic's and the CLI's flags and checks from them).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable, Protocol, runtime_checkable

from ..errors import UsageError

#: Environment variable every engine process carries with its stable slot index
#: (0..n-1). Local engines get it from the launcher, Kubernetes engines from the Job's
#: completion index. Scaling down to ``n`` removes the slots ``>= n``.
ENGINE_INDEX_ENV = "KUBEMAGIC_ENGINE_INDEX"
#: the entry-point group backends register in (``pyproject.toml``)
GROUP = "kubemagic.backends"
#: ``--backend auto``: the available backend of highest :attr:`Backend.auto_rank`
AUTO = "auto"


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
    #: engines run on the kernel's machine as its user, so a large push can reach them
    #: through one shared-memory file instead of a copy per engine (:mod:`..sharedpush`)
    engines_share_host: bool = False
    #: the platform replaces a lost engine only after a backoff (an Indexed Job's), so a
    #: fresh slot stands in for it meanwhile (:mod:`..surge`)
    surge_lost_engines: bool = False
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

    def signal_engine(self, engine: Any, sig: int) -> bool:
        """Send ``sig`` to the process of one engine (``engine``: the fleet's
        :class:`~kubemagic.fleet.EngineInfo`, with its slot, pid and controller identity).
        SIGINT interrupts the task it runs; SIGKILL ends it at once, and a new engine
        takes its slot (no crash counted). True when sent. Called from a map's own thread:
        it may block briefly."""

    def engine_death(self, engine: Any) -> Any:
        """What ``engine`` died of, as the platform saw it (a
        :class:`kubemagic.deaths.Death`), or None while it does not know (yet). Cheap:
        polled for a few seconds after an engine was lost."""


# -- the registry ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Backend:
    """A place engines can run: the object a ``kubemagic.backends`` entry point names.

    Its module must import quickly (no cluster client): ``--backend auto`` and the magic's
    flags load every backend's entry.
    """

    #: where its engines run, for messages: "only apply to engines on Kubernetes"
    where: str
    #: the dataclass of its options (fields made with :func:`.options.option`)
    options: type
    #: ``make_spec(**options)``: check every option, eagerly, and describe the engines
    make_spec: Callable[..., BackendSpec]
    #: can it work here? Cheap and never raising: ``--backend auto`` asks it
    available: Callable[[], bool]
    #: how to choose it, for messages: "add --backend kubernetes (and make a kubeconfig ...)"
    advice: str
    #: ``auto`` takes the available backend with the highest rank
    auto_rank: int = 0


@functools.lru_cache(maxsize=1)
def registered() -> dict[str, Backend]:
    """Name -> :class:`Backend` of every installed entry point, in ``auto``'s order."""
    loaded: dict[str, Backend] = {}
    for entry_point in entry_points(group=GROUP):
        backend = entry_point.load()
        if not isinstance(backend, Backend):
            raise TypeError(f"entry point {entry_point.name} = {entry_point.value} of {GROUP} "
                            "is not a kubemagic.backends.Backend")
        loaded.setdefault(entry_point.name.lower(), backend)
    return dict(sorted(loaded.items(), key=lambda item: (-item[1].auto_rank, item[0])))


def backend_choices() -> list[str]:
    """What ``--backend`` accepts: ``auto`` and every registered backend."""
    return [AUTO, *registered()]


def resolve_backend_name(backend: str) -> str:
    """The backend ``backend`` names; ``auto`` is the first registered one that says it is
    available (Kubernetes when in-cluster config or a kubeconfig is usable, else local)."""
    backends = registered()
    if backend == AUTO:
        for name, entry in backends.items():
            if entry.available():
                return name
        raise UsageError("no engine backend is available", fix=f"reinstall kubemagic: the "
                         f"local backend (entry point group {GROUP}) always is")
    if backend not in backends:
        choices = [f"--backend {name}" for name in backend_choices()]
        raise UsageError(f"unknown backend {backend!r}",
                         fix=f"use {', '.join(choices[:-1])} or {choices[-1]}")
    return backend


def make_backend_spec(backend: str, **options: Any) -> BackendSpec:
    """Build the spec for ``backend`` (or ``auto``'s choice), validating options eagerly."""
    return registered()[resolve_backend_name(backend)].make_spec(**options)
