"""KubeCluster: one session per kernel — a thin front over controller, fleet and maps.

The session starts the controller (:mod:`kubemagic.controller`) and the backend's engines,
owns the :class:`~kubemagic.fleet.Fleet` and the running map, and is what the magic, the
widget and user code call: start, stop, scale, push, execute, map, status. Commands go
down from here (dispatch → fleet → engines); changes come back up as
:class:`~kubemagic.events.Topic` events to the widget and progress displays.
"""

from __future__ import annotations

import sys
import uuid
from typing import Any, Callable, ContextManager, Iterable

import ipyparallel as ipp

from . import controller, lifetime
from ._loop import shared_loop
from .arguments import (check_adapt, check_chunksize, check_code, check_count, check_names,
                        check_session, materialize)
from .backends import BackendSpec, make_backend_spec
from .config import settings
from .dispatch import MapHandle
from .errors import SessionError, UsageError
from .events import Events, Topic
from .fleet import EngineInfo, Fleet
from .imports import recorded_imports
from .reaper import Reaper
from .recovery import Recovery
from .replay import Entry, ReplayLog
from .resume import ResultCache, plan
from .serialize import set_remote_names, use_notebook_pickler
from .scaling import Scaler
from .surge import Surge
from .teardown import Teardown, uninterrupted


class KubeCluster:
    """A fleet of ipyparallel engines for this kernel, local or on Kubernetes.

    Parameters
    ----------
    n:
        number of engines to start (default: ``c.Kubemagic.default_engines``, 2; at most
        ``c.Kubemagic.max_engines`` where an administrator set it, see
        :mod:`kubemagic.config`).
    backend:
        ``"auto"`` (Kubernetes when a kubeconfig or in-cluster config is usable, else
        local engines), ``"local"`` or ``"kubernetes"``.
    retries:
        how often a chunk whose engine died is re-run (default: the backend's).
    start_timeout:
        seconds to wait for engines before failing with the platform's diagnosis.
    idle_timeout:
        seconds without a running map after which the engines are scaled to zero (the next
        map starts them again); 0 turns it off. Default: the admin's
        ``c.Kubemagic.idle_timeout``, else 30 minutes on Kubernetes and off locally.
    **options:
        backend options, e.g. ``image``, ``namespace``, ``cpu``, ``memory``, ``gpu``
        for Kubernetes; ``env`` for both.

    Use it as a context manager, or call :meth:`start` / :meth:`stop`. Every method is
    synchronous and safe to call from a notebook; maps keep widgets responsive.
    """

    def __init__(
        self,
        n: int | None = None,
        backend: str = "auto",
        *,
        retries: int | None = None,
        start_timeout: float | None = None,
        idle_timeout: float | None = None,
        **options: Any,
    ) -> None:
        target, start_timeout, idle_timeout = check_session(
            n, retries, start_timeout, idle_timeout)
        # last of the checks: a Kubernetes spec claims controller ports (see k8s/ports.py)
        self.spec: BackendSpec = make_backend_spec(backend, **options)
        self.backend = self.spec.name
        self.options = options
        self.retries = self.spec.default_retries if retries is None else retries
        self.start_timeout = start_timeout or self.spec.start_timeout
        self.idle_timeout = self.spec.default_idle_timeout if idle_timeout is None else idle_timeout
        self.last_error = ""
        self.cluster_id = f"km-{uuid.uuid4().hex[:8]}"
        self.state = "created"  # created -> starting -> running -> stopped (or failed)
        self.replay = ReplayLog()
        #: maps started and not yet seen finished (several may run at once: they share
        #: the engines, each engine taking chunks from whichever asks first)
        self.maps: list[MapHandle] = []
        self._events = Events()
        self._loop = shared_loop()
        self.fleet = Fleet(self.replay, self._events, self._loop, report=self._report,
                           same_host=self.spec.engines_share_host)
        self.fleet.target = target
        self.scaler = Scaler(
            self.fleet, self._loop, lambda: self.launcher, start_timeout=self.start_timeout,
            shutdown_removed=self.spec.shutdown_removed_engines, events=self._events,
            where=f"{self.backend} backend, controller at {self.spec.controller_location}",
            report=self._report)
        self.controller = controller.Controller(self.spec, self.cluster_id, self._loop)
        self.recovery = Recovery(self.fleet, lambda: self.launcher)  # engines maps left busy
        Reaper(self.fleet, self.recovery, self._events)  # engines dropped while still running
        if self.spec.surge_lost_engines:  # a fresh slot until the platform replaces a lost one
            Surge(self.scaler, self._events, self._loop, lambda: self.state == "running")
        self._teardown = Teardown(self, self.fleet, self.controller, report=self._report)
        self._widget: Any = None
        lifetime.track(self)

    # -- lifecycle ----------------------------------------------------------------------
    def __enter__(self) -> "KubeCluster":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> "KubeCluster":
        """Start the controller and ``n`` engines; return once they are all ready.

        On failure (timeout, permission, bad image...) everything started so far is torn
        down before the error is raised, so nothing is left behind.
        """
        if self.state == "running":
            return self
        if self.state == "stopped":
            raise SessionError("this session was stopped",
                               fix="create a new one (or run the magic again)")
        self.state = "starting"
        self._events.emit(Topic.STATE)
        try:
            client = self.controller.start(self.n)
            # notebook code travels by value (serialize.py); engines switch in remote.joined
            use_notebook_pickler()
            set_remote_names(frozenset())  # nothing pushed to this session's engines yet
            self.fleet.attach(client)
            self.scaler.wait_for(self.n)
        except BaseException:
            with uninterrupted():
                self.state = "failed"
                self._teardown.begin()
            self._teardown.wait()
            raise
        self.state = "running"
        if self.idle_timeout > 0:
            self.scaler.watch_idle(self.idle_timeout, busy=self._mapping)
        self._events.emit(Topic.STATE)
        return self

    def stop(self) -> None:
        """Cancel any map, stop engines and controller, remove every trace. Idempotent. An
        interrupt leaves it stopped, the teardown going on (:mod:`kubemagic.teardown`)."""
        self.scaler.stop_watching()
        with uninterrupted():
            if self.state != "stopped":
                self.state = "stopped"
                for handle in self.maps:
                    handle.cancel(engines_gone=True)
                self._teardown.begin()
                # nothing of a stopped session stays in memory, even while a widget shows it
                self.replay.clear()
                self.maps = []
                set_remote_names(frozenset())
        self._events.emit(Topic.STATE)
        self._teardown.wait()

    @property
    def launcher(self) -> Any:
        """The backend's engine launcher (one engine set per session)."""
        return self.controller.launcher

    @property
    def client(self) -> ipp.Client:
        self._require_running()
        assert self.controller.client is not None
        return self.controller.client

    @property
    def n(self) -> int:
        """The requested number of engines."""
        return self.fleet.target

    def _require_running(self) -> None:
        if self.state == "stopped":
            raise SessionError(
                "the engines were stopped",
                fix="run the cell again (a new session starts), or call "
                "kubemagic.current(create=True)",
            )
        if self.state != "running" or self.controller.client is None:
            raise SessionError(f"the session is {self.state}", fix="call start() first")

    def _mapping(self) -> bool:
        """Busy for the idle watch: a map runs (or the session is not running)."""
        return self.state != "running" or any(not m.done() for m in self.maps)

    # -- engines ------------------------------------------------------------------------
    def process_events(self) -> None:
        """Apply pending engine registrations: the replay log goes to each new engine."""
        if self.controller.client is not None:
            self.fleet.refresh()

    def ready_ids(self) -> list[int]:
        """Engines that may receive work now (new ones are brought up to date first)."""
        self.process_events()
        return self.fleet.ready()

    def live_engines(self) -> list[EngineInfo]:
        return self.fleet.live()

    def scale(self, n: int, wait: bool = True) -> None:
        """Resize the fleet to ``n`` engines.

        Scaling up: new engines get the replay log before any task. Scaling down: the
        highest slots stop receiving work, finish what they have, then are removed — no
        task is lost or run twice. ``wait=False`` returns at once (used by the widget).
        """
        n = check_count(n, "the engine count", minimum=0)
        settings().check_engines(n)
        self._require_running()
        self.scaler.stop_adapting()  # a size asked for by hand ends adaptive scaling
        self.scaler.scale(n, wait)

    def adapt(self, minimum: int, maximum: int) -> None:
        """Scale with the work: as many engines as items wait, within [minimum, maximum];
        back to ``minimum`` when the maps are done. A later :meth:`scale` ends it."""
        low, high = check_adapt(minimum, maximum)
        self._require_running()
        self.scaler.adapt(low, high, pending=lambda: sum(
            p.total - p.done for p in (m.progress() for m in self.maps if not m.done())))

    def engine_states(self) -> list[dict[str, Any]]:
        """Per-slot state for displays: the launcher's view merged with the engines'."""
        try:
            return self.fleet.slot_rows(self.launcher.engine_states())
        except SessionError:
            return self.fleet.slot_rows([])

    # -- data and code --------------------------------------------------------------------
    def push(self, mapping: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Bind names on every engine, now and on every engine that joins later."""
        ns = check_names(dict(mapping or {}, **kwargs))
        if not ns:
            return
        self._require_running()
        self.fleet.broadcast(Entry("push", ns), what=f"push of {', '.join(sorted(ns))}")
        # engines hold these now: functions look them up there instead of carrying them
        set_remote_names(frozenset(self.replay.summary()["pushed_names"]))

    def forget(self, name: str) -> None:
        """Drop a pushed name from the replay log: engines that join later do not get it and
        the kernel releases its copy (engines running now keep theirs)."""
        if not self.replay.forget(name):
            raise UsageError(f"{name!r} is not in the replay log",
                             fix="%kubemap status lists the pushed names")
        set_remote_names(frozenset(self.replay.summary()["pushed_names"]))

    def execute(self, code: str) -> None:
        """Run ``code`` on every engine (and later on every engine that joins)."""
        self._require_running()
        self.fleet.broadcast(Entry("execute", check_code(code)), what="code")

    def sync_imports(self, quiet: bool = False) -> ContextManager[None]:
        """Import locally and on every engine (now and later), like ipyparallel's.

        Unlike ipyparallel's, it keeps aliases: ``import numpy as np`` binds ``np`` on
        the engines too, by comparing the caller's names before and after the block.
        """
        return recorded_imports(sys._getframe(1), self.execute, quiet)

    # -- maps -----------------------------------------------------------------------------
    def map_async(
        self,
        func: Callable[..., Any],
        *iterables: Iterable[Any],
        chunksize: int | str = "auto",
        ordered: bool = True,
        retries: int | None = None,
        timeout: float | None = None,
        return_exceptions: bool = False,
        speculate: bool = True,
        cache: bool | str | ResultCache | None = None,
    ) -> MapHandle:
        """Start a load-balanced map; return its handle at once (``result()``, ``cancel()``,
        ``progress()``). Several maps may run at once, sharing the engines.

        ``speculate``: run a copy of a straggling chunk on an idle engine near the end
        (first result wins); turn it off for functions with side effects. ``cache``:
        ``True`` (the user's cache directory) or a directory keeps every result on disk
        as it arrives; a re-run, even in a new kernel, computes only what is missing.
        """
        self._require_running()
        if not callable(func):
            raise UsageError(f"{func!r} is not callable", fix="pass a function to map")
        self.scaler.wake()
        if not iterables:
            raise UsageError("map needs at least one iterable", fix="map(func, items)")
        if self.n == 0 and not self.scaler.adaptive:
            raise SessionError("the fleet is scaled to 0 engines",
                               fix="scale up first: %kubemap scale N (or cluster.scale(N))")
        resume, args = plan(cache, func, materialize(iterables), self.replay)
        handle = MapHandle(
            self.fleet, self._events, func, args, chunksize=check_chunksize(chunksize),
            ordered=ordered, timeout=timeout, return_exceptions=return_exceptions,
            retries=self.retries if retries is None else check_count(retries, "retries", 0),
            starve_timeout=self.start_timeout, recovery=self.recovery, speculate=speculate,
            resume=resume)
        # kept: running maps, and named ones whose outcome no one has seen (%kubemap wait)
        self.maps = [m for m in self.maps if not m.done() or (m.name and not m.seen)]
        self.maps.append(handle)
        handle.start()
        self._events.emit(Topic.MAP)
        return handle

    def map(self, func: Callable[..., Any], *iterables: Iterable[Any],
            progress: bool = True, **kwargs: Any) -> list[Any]:
        """Map ``func`` over the iterables on the engines; results in item order.

        A failing item raises :class:`~kubemagic.errors.RemoteItemError` as soon as it is
        known (the rest is cancelled), unless ``return_exceptions=True``.
        Ctrl-C / the notebook's stop button cancels pending work and keeps the engines.
        """
        handle = self.map_async(func, *iterables, **kwargs)
        return handle.result(progress=progress, keep=False)

    @property
    def current_map(self) -> MapHandle | None:
        """The map started last (running or not)."""
        return self.maps[-1] if self.maps else None

    # -- observation ----------------------------------------------------------------------
    def add_listener(self, callback: Callable[[Topic], None]) -> None:
        """``callback(topic)`` on changes (a :class:`~kubemagic.events.Topic`)."""
        self._events.subscribe(callback)

    def _report(self, problem: str) -> None:
        """A problem no caller waits for (a failed scale, an engine's failed first task)."""
        self.last_error = problem
        self._events.emit(Topic.STATE)

    def logs(self, tail: int = 200) -> str:
        """Recent engine output (process logs, or pod logs on Kubernetes)."""
        return self.controller.logs(tail)

    def status(self) -> dict[str, Any]:
        """A plain-data summary (used by ``%kubemap status`` and the widget)."""
        running = self.state == "running"
        return {
            "cluster_id": self.cluster_id,
            "backend": self.backend,
            "state": self.state,
            "requested": self.n,
            "ready": len(self.ready_ids()) if running else 0,
            "engines": self.engine_states() if self.controller.client is not None else [],
            "replay": self.replay.summary(),
            "map": self.current_map.progress().__dict__ if self.current_map else None,
            "running_maps": sum(not m.done() for m in self.maps),
            "last_error": self.last_error,
            "notice": self.scaler.notice,
        }

    @property
    def widget(self) -> Any:
        """The live ipywidgets view of this session (created on first use)."""
        if self._widget is None:
            from .widget import SessionWidget

            self._widget = SessionWidget(self)
        return self._widget

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def __repr__(self) -> str:
        return (f"<KubeCluster {self.cluster_id} {self.backend} {self.state} "
                f"{len(self.fleet.ready())}/{self.n} engines>")


# -- one session per kernel ----------------------------------------------------------------
_current: KubeCluster | None = None


def current(create: bool = False, **kwargs: Any) -> KubeCluster | None:
    """The kernel's session, reused by every cell; with ``create``, start one if needed."""
    global _current
    if _current is not None and _current.state in ("running", "starting"):
        return _current
    if not create:
        return _current
    _current = KubeCluster(**kwargs)
    try:
        _current.start()
    except BaseException:
        _current = None
        raise
    return _current

