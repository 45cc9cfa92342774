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
options once, as the fields of a dataclass made with :func:`option`; the magic's and the
CLI's flags (:func:`option_flags`), the running-fleet check (:func:`fleet_conflicts`) and
the "that option is another backend's" error (:func:`parse_options_of`) derive from them.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib.metadata import entry_points
from typing import Any, Callable, Literal, Protocol, TypeVar, runtime_checkable

from ..errors import UsageError, as_flags

#: Environment variable every engine process carries with its stable slot index
#: (0..n-1). Local engines get it from the launcher, Kubernetes engines from the Job's
#: completion index. Scaling down to ``n`` removes the slots ``>= n``.
ENGINE_INDEX_ENV = "KUBEMAGIC_ENGINE_INDEX"
#: the entry-point group backends register in (``pyproject.toml``)
GROUP = "kubemagic.backends"
#: ``--backend auto``: the available backend of highest :attr:`Backend.auto_rank`
AUTO = "auto"

#: who consumes an option: the session's spec of the controller (``session``), the engine
#: launcher itself (``launcher``), or the engines' description the launcher builds from it
#: (``manifest``, e.g. a pod spec); a backend turns the last two into launcher settings
Layer = Literal["session", "launcher", "manifest"]
_METADATA_KEY = "kubemagic.option"
T = TypeVar("T")


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


# -- options: declared once per backend ------------------------------------------------------
@dataclass(frozen=True)
class Option:
    """How one backend option is checked, shown and consumed: its dataclass field's metadata."""

    #: the flag's text or the Python value -> the checked value; raises one UsageError
    #: naming the flag (``--name``) and a valid example
    parse: Callable[[Any], Any]
    #: one line for ``%kubemap?`` and ``kubemagic demo --help``
    help: str
    #: how the flag's value is written, e.g. ``KEY=VALUE[,...]`` (none for on/off options)
    metavar: str | None
    layer: Layer
    #: it describes the engines: a cell giving another value than the running session's
    #: must stop that session first (the magic's check, :func:`fleet_conflicts`)
    fleet: bool = True
    #: ``None`` is a value of its own (e.g. "keep the image's user"), not "the default"
    nullable: bool = False
    #: the name the consuming layer knows it by, when not the option's own
    #: (``env`` is ipyparallel's ``environment`` launcher trait)
    target: str = ""


def option(
    *,
    parse: Callable[[Any], Any],
    help: str,
    layer: Layer,
    metavar: str | None = None,
    default: Any = None,
    fleet: bool = True,
    nullable: bool = False,
    target: str = "",
) -> Any:
    """A dataclass field declaring one backend option (see :class:`Option`).

    A boolean ``default`` makes an on/off option (``--name`` / ``--no-name``); a dict or
    list default is copied for each instance.
    """
    metadata = {_METADATA_KEY: Option(parse, help, metavar, layer, fleet, nullable, target)}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def declared(options_class: type) -> dict[str, Option]:
    """Option name -> :class:`Option`, for every field of a backend's options dataclass."""
    return {f.name: f.metadata[_METADATA_KEY] for f in fields(options_class)}


def layer_values(options: Any, *layers: Layer) -> dict[str, Any]:
    """The checked values of the options consumed by ``layers``, under their target names."""
    return {
        opt.target or name: getattr(options, name)
        for name, opt in declared(type(options)).items()
        if opt.layer in layers
    }


def parse_options_of(options_class: type[T], backend: str, options: Mapping[str, Any]) -> T:
    """Check ``options`` (keyword arguments or flag strings) into ``options_class``.

    ``None`` means "not given" (except for :attr:`Option.nullable` options). An option of
    another backend is refused, naming that backend, unless it is empty (``0``, ``""``,
    ``{}``), so one call can serve several backends; a name no backend knows is refused
    with the valid names.
    """
    own = declared(options_class)
    _refuse_strangers(backend, own, {k: v for k, v in options.items() if k not in own})
    values = {}
    for name, opt in own.items():
        value = options.get(name)
        if value is not None:
            values[name] = opt.parse(value)
        elif name in options and opt.nullable:
            values[name] = None
    return options_class(**values)


def _refuse_strangers(backend: str, own: Mapping[str, Option], strangers: Mapping[str, Any]) -> None:
    if not strangers:
        return
    owners = {
        name: other
        for other, entry in registered().items()
        if other != backend
        for name in declared(entry.options)
    }
    foreign = sorted(name for name, value in strangers.items() if name in owners and value)
    if foreign:
        others = [registered()[o] for o in sorted({owners[name] for name in foreign})]
        raise UsageError(
            f"{as_flags(foreign)} only apply to engines on "
            f"{' or '.join(o.where for o in others)}, but the backend is {backend}",
            fix=" or ".join(o.advice for o in others) + ", or drop those options",
        )
    unknown = sorted(name for name in strangers if name not in owners)
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(own), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise UsageError(
            f"unknown option(s) {', '.join(unknown)} for the {backend} backend",
            fix=f"{hint}valid options are: {', '.join(own)}",
        )


def parse_key_values(
    flag: str,
    value: Mapping[str, Any] | str | list[str],
    *,
    env_names: bool = False,
    reserved: frozenset[str] = frozenset(),
) -> dict[str, str]:
    """``{"a": "1"}``, ``"a=1,b=2"`` or ``["a=1", "b=2"]`` → ``{"a": "1", "b": "2"}``.

    With ``env_names`` the keys must be environment variable names, none of ``reserved``
    (the variables a backend sets itself: a user's value would break the engines).
    """
    name = as_flags([flag])
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
                raise UsageError(f"{name} {item!r} is not KEY=VALUE",
                                 fix=f"write {name} KEY=VALUE[,KEY2=VALUE2]")
            pairs.append((key.strip(), val))
    result: dict[str, str] = {}
    for key, val in pairs:
        if env_names and not re.match(r"^[A-Za-z_][A-Za-z0-9_.-]*$", key):
            raise UsageError(
                f"{name} name {key!r} is not a valid environment variable name",
                fix=f"use letters, digits and underscores, e.g. {name} OMP_NUM_THREADS=1",
            )
        if key in reserved:
            raise UsageError(
                f"{name} {key} is set by kubemagic for every engine and cannot be overridden",
                fix=f"drop {key} from {name} (reserved: {', '.join(sorted(reserved))})",
            )
        result[key] = str(val)
    return result


#: title and description of the argument group :func:`option_flags` fills (magic and CLI)
FLAG_GROUP = ("engine options",
              "[backend] names the backends that use the option; another backend refuses it")


@dataclass(frozen=True)
class Flag:
    """The command-line flag of one option, as ``argparse.add_argument(*args, **kwargs)``."""

    name: str
    args: tuple[str, ...]
    kwargs: dict[str, Any]


def option_flags() -> list[Flag]:
    """One flag per option of every registered backend, for the magic and the CLI.

    Every flag defaults to ``None`` ("not given"), so only what the user typed reaches the
    backend, as text (the option's parser reads it) unless the default is a number. An
    option several backends declare (``env``) is one flag; its help names them.
    """
    owners: dict[str, list[str]] = {}
    first: dict[str, tuple[Option, Any]] = {}
    for backend, entry in registered().items():
        for f in fields(entry.options):
            owners.setdefault(f.name, []).append(backend)
            first.setdefault(f.name, (f.metadata[_METADATA_KEY], f.default))
    flags = []
    for name, (opt, default) in first.items():
        kwargs: dict[str, Any] = {"dest": name, "default": None,
                                  "help": f"[{', '.join(owners[name])}] {opt.help}"}
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:  # a number with a number default is one on the command line too: --gpu -1
            kwargs["metavar"] = opt.metavar
            if isinstance(default, (int, float)) and not opt.nullable:
                kwargs["type"] = type(default)
        flags.append(Flag(name, (as_flags([name]),), kwargs))
    return flags


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The engine options a parsed command line gives (its :func:`option_flags` not left out)."""
    return {f.name: getattr(args, f.name) for f in option_flags()
            if getattr(args, f.name, None) is not None}


def fleet_conflicts(backend: str, running: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    """The options in ``given`` that describe other engines than a running ``backend``
    session started with ``running``: compared as checked values, so ``"gpu=true"`` and
    ``{"gpu": "true"}`` are the same node selector. An option of another backend always
    conflicts (these engines cannot have it)."""
    options_class = registered()[backend].options
    own = declared(options_class)

    def checked(options: Mapping[str, Any], name: str) -> Any:
        subset = {name: options[name]} if name in options else {}
        return getattr(parse_options_of(options_class, backend, subset), name)

    return [
        name for name in given
        if name not in own or (own[name].fleet and checked(given, name) != checked(running, name))
    ]


# -- the registry ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Backend:
    """A place engines can run: the object a ``kubemagic.backends`` entry point names.

    Its module must import quickly (no cluster client): ``--backend auto`` and the magic's
    flags load every backend's entry.
    """

    #: where its engines run, for messages: "only apply to engines on Kubernetes"
    where: str
    #: the dataclass of its options (fields made with :func:`option`)
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
