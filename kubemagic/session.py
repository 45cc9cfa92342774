"""KubeCluster: one session per kernel — controller, engines, replay log, maps.

The session owns the ipyparallel ``Cluster`` (controller beside the kernel, engines from a
backend), the ``Client``, and the bookkeeping ipyparallel does not do: which engines are
ready, the replay log sent to engines that join later, draining before a scale-down, and
the running map. Kubernetes I/O lives in the backend's launcher, UI in ``widget.py``.
"""

from __future__ import annotations

import atexit
import builtins
import contextlib
import inspect
import logging
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import ipyparallel as ipp

from . import remote
from ._guard import PARENT_PID_ENV
from ._loop import shared_loop, wait_future, wait_until
from .backends import BackendSpec, make_backend_spec
from .config import settings
from .dispatch import MapHandle
from .errors import SessionError, StartupError, UsageError
from .idle import IdleWatch
from .replay import Entry, ReplayLog
from .serialize import set_remote_names, use_notebook_pickler

log = logging.getLogger("kubemagic")

#: heartbeat period (ms): ipyparallel's 3000 ms default makes registration wait up to
#: two beats and makes a dead engine take ~33 s to notice; 100 ms keeps both sub-second
HEARTBEAT_MS = 100
#: beats an engine may miss before the controller declares it dead (~2 s: fast enough to
#: requeue a lost engine's chunks, slow enough that a loaded 2-core machine does not
#: declare a healthy engine dead and shrink the fleet)
HEARTMONITOR_MISSES = 20
#: beats of a vanished controller an engine tolerates before exiting (~6 s)
ENGINE_HEARTBEAT_MISSES = 10

_GUARDED_CONTROLLER_CMD = [sys.executable, "-m", "kubemagic._guard", "ipyparallel.controller"]


@dataclass
class EngineInfo:
    """What the session knows about one engine."""

    id: int
    index: int = -1  # backend slot, learned from the engine itself
    host: str = ""
    state: str = "joining"  # joining -> ready -> draining -> gone
    inflight: int = 0
    joined: float = 0.0


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
        site = settings()
        self._target = _check_count(site.defaults.default_engines if n is None else n, "n")
        site.check_engines(self._target)
        if start_timeout is not None and (
            isinstance(start_timeout, bool)
            or not isinstance(start_timeout, (int, float))
            or not start_timeout > 0
        ):
            raise UsageError(
                f"--start-timeout {start_timeout!r} must be a positive number of seconds",
                fix="pass e.g. --start-timeout 120 (or leave it out for the backend default)",
            )
        if retries is not None:
            _check_count(retries, "retries", minimum=0)
        if idle_timeout is None:
            idle_timeout = site.defaults.idle_timeout
        if idle_timeout is not None and (
            isinstance(idle_timeout, bool) or not isinstance(idle_timeout, (int, float))
            or idle_timeout < 0
        ):
            raise UsageError(
                f"--idle-timeout {idle_timeout!r} must be a number of seconds, 0 or more",
                fix="e.g. --idle-timeout 1800 (0 keeps idle engines for ever)",
            )
        # last of the checks: a Kubernetes spec claims controller ports (see k8s/ports.py)
        self.spec: BackendSpec = make_backend_spec(backend, **options)
        self.backend = self.spec.name
        self.options = options
        self.retries = self.spec.default_retries if retries is None else retries
        self.start_timeout = start_timeout or self.spec.start_timeout
        self.idle_timeout = float(self.spec.default_idle_timeout if idle_timeout is None
                                  else idle_timeout)
        self.notice = ""  # not an error: e.g. "scaled to zero after 30 min idle"
        self._parked = 0  # engines to start again after an idle park
        self._waking = False  # bringing them back: the idle watch must not park meanwhile
        self._idle: IdleWatch | None = None
        self.cluster_id = f"km-{uuid.uuid4().hex[:8]}"
        self.state = "created"  # created -> starting -> running -> stopped
        self.replay = ReplayLog()
        self.engines: dict[int, EngineInfo] = {}
        self.current_map: MapHandle | None = None
        self.last_error: str = ""
        self._cluster: ipp.Cluster | None = None
        self._client: ipp.Client | None = None
        self._views: dict[int, Any] = {}
        self._events: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._lock = threading.RLock()
        self._listeners: list[Callable[[str], None]] = []
        self._profile_dir = ""
        self._loop = shared_loop()
        self._widget: Any = None
        _live_sessions.add(self)
        # run our atexit hook before ipyparallel's and the kubernetes client's own (atexit is
        # LIFO and they register at import time, possibly after kubemagic was imported)
        atexit.unregister(_stop_all)
        atexit.register(_stop_all)

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
            raise SessionError(
                "this session was stopped", fix="create a new one (or run the magic again)"
            )
        self.state = "starting"
        self._notify("state")
        try:
            self._loop.run(self._start_controller())
            self._wait_for_engines(self._target)
        except BaseException:
            self.state = "failed"
            self._teardown()
            raise
        self.state = "running"
        if self.idle_timeout > 0:
            self._idle = IdleWatch(self.idle_timeout, busy=self._mapping, park=self._park)
            self._loop.submit(self._idle.run())
        self._notify("state")
        return self

    def _mapping(self) -> bool:
        """Busy for the idle watch: a map runs, or the engines are coming back for one."""
        return self._waking or (self.current_map is not None and not self.current_map.done())

    def _park(self) -> None:
        """Idle for idle_timeout (loop thread): scale to zero, remember how many to bring
        back. Checked again under the lock: a map that just began keeps its engines."""
        assert self._idle is not None
        with self._lock:
            if (self.state != "running" or self._target == 0 or self._mapping()
                    or not self._idle.due(time.monotonic())):
                return
            self._parked = self._target
            self.notice = (f"no map for {self.idle_timeout:.0f} s: engines scaled to zero; "
                           f"the next map starts {self._parked} again")
            self.scale(0, wait=False)

    def _wake(self) -> None:
        """Before a map: bring back what an idle park removed, saying so in one line."""
        with self._lock:
            if self._idle is not None:
                self._idle.touch()
            n, self._parked = self._parked, 0
            parked = bool(n) and self._target == 0
            if parked:
                self.notice = ""
        if parked:
            print(f"kubemagic: the engines were scaled to zero after {self.idle_timeout:.0f} s "
                  f"without a map; starting {n} again (pushes and code are replayed)")
            self._waking = True
            try:
                self.scale(n)
            finally:
                self._waking = False

    async def _start_controller(self) -> None:
        spec = self.spec
        self._profile_dir = tempfile.mkdtemp(prefix=f"kubemagic-{self.cluster_id}-")
        # the controller's own environment only: setting these in the kernel's would leak
        # into every later session and plain ipyparallel cluster of this kernel
        controller_env = {PARENT_PID_ENV: str(os.getpid())}
        if spec.curve:
            controller_env["IPP_ENABLE_CURVE"] = "1"
        config = {
            "LocalControllerLauncher": {
                "controller_cmd": _GUARDED_CONTROLLER_CMD,
                "environment": controller_env,
            },
            **{k: dict(v) for k, v in spec.config.items()},
        }
        # engine arguments are a launcher trait (ipp.Cluster has none)
        launcher_cfg = config.setdefault(spec.engine_launcher_class.__name__, {})
        launcher_cfg["engine_args"] = [
            f"--IPEngine.max_heartbeat_misses={ENGINE_HEARTBEAT_MISSES}",
            *launcher_cfg.get("engine_args", []),
            *spec.engine_args,
        ]
        self._cluster = ipp.Cluster(
            n=self._target,
            cluster_id=self.cluster_id,
            profile_dir=self._profile_dir,
            controller_ip=spec.controller_ip,
            controller_location=spec.controller_location,
            controller_args=[
                "--IPController.use_threads=True",
                # no result store: kubemagic keeps results itself, and the default
                # in-memory DB holds a copy of every push (~200 MB per 100 MB pushed)
                "--IPController.db_class=NoDB",
                f"--HeartMonitor.period={HEARTBEAT_MS}",
                f"--HeartMonitor.max_heartmonitor_misses={HEARTMONITOR_MISSES}",
                *spec.controller_args,
            ],
            engine_launcher_class=spec.engine_launcher_class,
            shutdown_atexit=False,
            log_level=logging.ERROR,  # engine exit output goes to logs(), not stderr
            config=_as_config(config),
        )
        await self._cluster.start_controller()
        self.spec.release_ports()  # bound now: other kernels' probes see them taken
        await self._cluster.start_engines(self._target)
        # The client lives beside the controller: connect over loopback, not through the
        # address advertised to pods (it may be wrong -- that must fail the engines with a
        # diagnosis, not hang our own client).
        info = self._cluster.controller.get_connection_info()
        if inspect.isawaitable(info):
            info = await info
        self._client = ipp.Client(
            dict(info["client"], location="127.0.0.1"),
            cluster=self._cluster,
            profile_dir=self._profile_dir,
            cluster_id=self.cluster_id,
        )
        # notebook code travels by value (kubemagic/serialize.py); every engine switches
        # too, in its first task (remote.joined)
        use_notebook_pickler()
        set_remote_names(frozenset())  # nothing pushed to this session's engines yet
        self._client._registration_callbacks.append(self._on_registration)
        for eid in list(self._client.ids):
            self._events.put({"event": "register", "id": eid})

    def _wait_for_engines(self, n: int) -> None:
        """Block (pumping UI events) until ``n`` engines are ready, or fail with a diagnosis.

        Every couple of seconds the launcher is asked whether the platform refuses the
        engines (a ResourceQuota, an admission policy): that never resolves by waiting, so
        it fails at once, quoting the platform's message.
        """
        t0 = time.monotonic()
        since = time.time() - 1
        probe: dict[str, Any] = {"fut": None, "next": t0 + 1.0, "refused": None}

        def refused() -> bool:
            fut = probe["fut"]
            if fut is not None and fut.done():
                probe["fut"] = None
                with contextlib.suppress(Exception):  # a failed probe proves nothing
                    probe["refused"] = fut.result()
            if probe["fut"] is None and time.monotonic() >= probe["next"]:
                probe["next"] = time.monotonic() + 2.0
                probe["fut"] = self._loop.submit(self.launcher.refusal(since))
            return probe["refused"] is not None

        def settled() -> bool:
            self.process_events()
            return len(self.ready_ids()) >= n or self._engines_stopped() or refused()

        wait_until(settled, self.start_timeout, tick=lambda: self._notify("engines"))
        if len(self.ready_ids()) >= n:
            return
        if probe["refused"] is not None:
            raise StartupError(
                f"only {len(self.ready_ids())} of {n} engines could start: the cluster "
                f"refuses to create more engine pods ({self.backend} backend):\n"
                f"  {probe['refused']}",
                fix="ask for fewer engines or smaller --cpu/--memory, or stop other "
                "sessions of yours; the namespace's quota is set by your administrator "
                "(kubectl describe resourcequota shows it)",
            )
        # a failed Job (e.g. engines that cannot reach the controller) fails at once,
        # instead of after the whole start_timeout
        when = (f"the engines stopped after {time.monotonic() - t0:.0f} s"
                if self._engines_stopped() else f"within {self.start_timeout:.0f} s")
        diagnosis = self._loop.run(self.launcher.diagnose(), timeout=30)
        raise StartupError(
            f"only {len(self.ready_ids())} of {n} engines connected: {when} "
            f"({self.backend} backend, controller at "
            f"{self.spec.controller_location}).\n{diagnosis}",
            fix="fix the cause quoted above, or raise --start-timeout if the "
            "engines are only slow to start",
        )

    def stop(self) -> None:
        """Cancel any map, stop engines and controller, remove every trace. Idempotent."""
        if self._idle is not None:
            self._idle.stop()
        if self.state == "stopped":
            return
        if self.current_map is not None:
            self.current_map.cancel()
        self._teardown()
        self.state = "stopped"
        self._notify("state")

    def _teardown(self) -> None:
        self.spec.release_ports()
        client, cluster = self._client, self._cluster
        self._client = self._cluster = None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        if cluster is not None:
            try:
                self._loop.run(cluster.stop_cluster(), timeout=120)
            except Exception as e:  # still remove what we can, but say what failed
                self.last_error = f"stopping the cluster failed: {e}"
                log.warning(self.last_error)
        for info in self.engines.values():
            info.state = "gone"
        if self._profile_dir:
            shutil.rmtree(self._profile_dir, ignore_errors=True)
        _live_sessions.discard(self)

    @property
    def launcher(self) -> Any:
        """The backend's engine launcher (one engine set per session)."""
        if self._cluster is None or not self._cluster.engines:
            raise SessionError("the session is not running", fix="call start() first")
        return next(iter(self._cluster.engines.values()))

    def _engines_stopped(self) -> bool:
        """The backend gave up on the whole engine set (Job failed or deleted, every local
        engine exited): waiting longer cannot bring engines."""
        try:
            return self.launcher.state == "after"
        except SessionError:
            return True

    @property
    def client(self) -> ipp.Client:
        self._require_running()
        assert self._client is not None
        return self._client

    @property
    def n(self) -> int:
        """The requested number of engines."""
        return self._target

    def _require_running(self) -> None:
        if self.state == "stopped":
            raise SessionError(
                "the engines were stopped",
                fix="run the cell again (a new session starts), or call "
                "kubemagic.current(create=True)",
            )
        if self.state != "running" or self._client is None:
            raise SessionError(f"the session is {self.state}", fix="call start() first")

    # -- engines ------------------------------------------------------------------------
    def process_events(self) -> None:
        """Apply registrations/unregistrations: replay the log to every new engine.

        Called from every entry point and from the dispatcher loop, so an engine that
        joined is brought up to date before it is given any work.
        """
        with self._lock:
            while True:
                try:
                    event = self._events.get_nowait()
                except queue.Empty:
                    break
                eid = int(event["id"])
                if event["event"] == "register":
                    self._join(eid)
                else:
                    info = self.engines.get(eid)
                    if info is not None:
                        info.state = "gone"
                        self._views.pop(eid, None)
                    self._notify("engines")

    def _on_registration(self, event: dict[str, Any]) -> None:
        """Client IO thread: queue the event and have the loop thread apply it now.

        Sending from the client's own IO thread is not safe, and waiting for the next API
        call would leave a joining engine without its replay while the kernel is idle
        (a Scale click after the cell ended, a pod the Job replaced).
        """
        self._events.put(event)
        self._loop.loop.call_soon_threadsafe(self._process_events_quietly)

    def _process_events_quietly(self) -> None:
        try:
            if self._client is not None:
                self.process_events()
        except Exception as e:  # keep the loop thread alive; say what happened
            self.last_error = f"bringing a new engine up to date failed: {e}"
            self._notify("state")

    def _join(self, eid: int) -> None:
        if eid in self.engines and self.engines[eid].state != "gone":
            return
        info = self.engines[eid] = EngineInfo(eid, joined=time.time())
        view = self._view(eid)
        for entry in self.replay:
            self._send_entry(view, entry)
        ar = view.apply_async(remote.joined)
        ar.add_done_callback(lambda f, info=info: self._learned(info, f))
        info.state = "ready"
        self._notify("engines")

    def _learned(self, info: EngineInfo, fut: Any) -> None:
        # runs in the client's IO thread: only record, never send from here
        try:
            data = fut.result()
        except Exception as e:  # the engine died right after joining
            info.state = "gone"
            self.last_error = f"engine {info.id} failed its first task: {e}"
            return
        info.index, info.host = data["index"], data["host"]
        if info.index >= self._target and info.state == "ready":
            info.state = "draining"
        self._notify("engines")

    def _view(self, eid: int) -> Any:
        view = self._views.get(eid)
        if view is None:
            assert self._client is not None
            view = self._views[eid] = self._client[eid]
            view.block = False
        return view

    @staticmethod
    def _send_entry(view: Any, entry: Entry) -> Any:
        if entry.kind == "push":
            return view.push(entry.payload, block=False)
        return view.execute(entry.payload, block=False)

    def ready_ids(self) -> list[int]:
        """Engines that may receive work now (new engines are brought up to date first)."""
        if self._client is not None:
            self.process_events()
        with self._lock:
            return sorted(e.id for e in self.engines.values() if e.state == "ready")

    def engine_alive(self, eid: int) -> bool:
        """Whether the controller still lists engine ``eid`` (else: mark it gone)."""
        alive = self._client is not None and eid in self._client.ids
        if not alive:
            with self._lock:
                info = self.engines.get(eid)
                if info is not None:
                    info.state = "gone"
                self._views.pop(eid, None)
        return alive

    def live_engines(self) -> list[EngineInfo]:
        with self._lock:
            return [e for e in self.engines.values() if e.state != "gone"]

    def scale(self, n: int, wait: bool = True) -> None:
        """Resize the fleet to ``n`` engines.

        Scaling up: new engines get the replay log before any task. Scaling down: the
        highest slots stop receiving work, finish what they have, then are removed — no
        task is lost or run twice. ``wait=False`` returns at once (used by the widget).
        """
        n = _check_count(n, "the engine count", minimum=0)
        settings().check_engines(n)
        self._require_running()
        with self._lock:
            self._target = n
            for info in self.engines.values():
                if info.state == "ready" and info.index >= n:
                    info.state = "draining"
        self._notify("engines")
        before = len(self.ready_ids())
        fut = self._loop.submit(self._scale(n))
        fut.add_done_callback(self._scale_done)
        if wait:
            wait_future(fut, timeout=self.start_timeout + 60)
            try:
                self._wait_for_engines(n)
            except StartupError:
                # keep what runs; do not leave the platform retrying pods that cannot start
                with contextlib.suppress(Exception):
                    self.scale(max(before, len(self.ready_ids())), wait=False)
                raise

    def _scale_done(self, fut: Any) -> None:
        exc = fut.exception()
        if exc is not None:
            self.last_error = f"scaling failed: {exc}"
            self._notify("state")

    async def _scale(self, n: int) -> None:
        import asyncio

        while True:  # drain: let removed slots finish the chunks they hold
            with self._lock:
                busy = [e for e in self.engines.values() if e.state == "draining" and e.inflight]
            if not busy:
                break
            await asyncio.sleep(0.01)
        with self._lock:
            leaving = [e.id for e in self.engines.values() if e.state == "draining"]
        if leaving and self._client is not None and self.spec.shutdown_removed_engines:
            # a clean shutdown unregisters at once; a terminated engine would linger in
            # the controller (and in client.ids) until its heartbeats are missed
            with contextlib.suppress(Exception):
                self._client.shutdown(targets=leaving, block=False)
        await self.launcher.scale(n)
        # return once the controller has dropped them too, so that client[:] right after
        # a scale-down does not address an engine that is on its way out
        deadline = time.monotonic() + HEARTBEAT_MS * HEARTMONITOR_MISSES / 1000 + 5
        while self._client is not None and time.monotonic() < deadline:
            if not set(leaving) & set(self._client.ids):
                break
            await asyncio.sleep(0.02)
        with self._lock:
            for info in self.engines.values():
                if info.state == "draining":
                    info.state = "gone"
        self._notify("engines")

    def engine_states(self) -> list[dict[str, Any]]:
        """Per-slot state for displays: the launcher's view merged with the engines'."""
        try:
            slots = {s["index"]: dict(s) for s in self.launcher.engine_states()}
        except SessionError:
            slots = {}
        for info in self.live_engines():
            if info.index < 0:
                continue  # registered a moment ago; its slot is not known yet
            row = slots.setdefault(info.index, {"index": info.index, "name": info.host,
                                                 "phase": "", "reason": ""})
            row.update(engine=info.id, state=info.state, inflight=info.inflight)
        return [slots[k] for k in sorted(slots)]

    # -- data and code --------------------------------------------------------------------
    def push(self, mapping: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Bind names on every engine, now and on every engine that joins later."""
        ns = dict(mapping or {}, **kwargs)
        if not ns:
            return
        for key in ns:
            if not isinstance(key, str) or not key.isidentifier():
                raise UsageError(f"cannot push {key!r}: not a valid Python name",
                                 fix="use identifiers as keys")
        self._broadcast(Entry("push", ns), what=f"push of {', '.join(sorted(ns))}")
        # engines hold these now: functions look them up there instead of carrying them
        set_remote_names(frozenset(self.replay.summary()["pushed_names"]))

    def execute(self, code: str) -> None:
        """Run ``code`` on every engine (and later on every engine that joins)."""
        try:
            compile(code, "<kubemagic>", "exec")
        except SyntaxError as e:
            raise UsageError(
                f"syntax error in the code for the engines, line {e.lineno}: {e.msg}",
                fix="fix the code; nothing was sent to the engines",
            ) from None
        self._broadcast(Entry("execute", code), what="code")

    def _broadcast(self, entry: Entry, what: str) -> None:
        self._require_running()
        with self._lock:
            self.process_events()
            ids = self.ready_ids() + [e.id for e in self.engines.values() if e.state == "draining"]
            pending = []
            try:
                for eid in ids:
                    pending.append(self._send_entry(self._view(eid), entry))
            except Exception as e:
                raise UsageError(
                    f"cannot send the {what} to the engines: {type(e).__name__}: {e}",
                    fix="only picklable objects can be sent; convert or drop the object",
                ) from None
            if entry.kind == "push":
                self.replay.push(entry.payload)
            else:
                self.replay.execute(entry.payload)
        for ar in pending:
            try:
                wait_future(ar)
            except ipp.error.RemoteError as e:
                raise SessionError(
                    f"the {what} failed on the engines: {e.ename}: {e.evalue}",
                    fix="fix the code; it is recorded and will also run on engines that "
                    "join later, so a failing import must be fixed in the engine image",
                ) from None

    @contextlib.contextmanager
    def sync_imports(self, quiet: bool = False) -> Iterator[None]:
        """Import locally and on every engine (now and later), like ipyparallel's.

        Unlike ipyparallel's, it keeps aliases: ``import numpy as np`` binds ``np`` on
        the engines too, by comparing the caller's names before and after the block.
        """
        frame = sys._getframe(2)
        before = dict(frame.f_globals)
        imported: list[str] = []
        real_import = builtins.__import__

        def recording_import(name: str, globals: Any = None, locals: Any = None,
                             fromlist: Any = (), level: int = 0) -> Any:
            if level == 0 and frame.f_globals is globals:
                imported.append(name)
            return real_import(name, globals, locals, fromlist, level)

        builtins.__import__ = recording_import
        try:
            yield
        finally:
            builtins.__import__ = real_import
        code = import_statements(before, frame.f_globals, imported)
        if code:
            if not quiet:
                print("importing on engines:", "; ".join(code.splitlines()))
            self.execute(code)

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
    ) -> MapHandle:
        """Start a load-balanced map and return a handle (``result()``, ``cancel()``)."""
        self._require_running()
        if not callable(func):
            raise UsageError(f"{func!r} is not callable", fix="pass a function to map")
        self._wake()
        if not iterables:
            raise UsageError("map needs at least one iterable", fix="map(func, items)")
        if self.current_map is not None and not self.current_map.done():
            raise SessionError(
                "another map is still running on these engines",
                fix="wait for it, or cancel it (Stop button / handle.cancel())",
            )
        if self._target == 0:
            raise SessionError("the fleet is scaled to 0 engines",
                               fix="scale up first: %kubemap scale N (or cluster.scale(N))")
        args = _materialize(iterables)
        handle = MapHandle(
            self, func, args, chunksize=_check_chunksize(chunksize), ordered=ordered,
            retries=self.retries if retries is None else _check_count(retries, "retries", 0),
            timeout=timeout, return_exceptions=return_exceptions,
        )
        self.current_map = handle
        handle.start()
        self._notify("map")
        return handle

    def map(self, func: Callable[..., Any], *iterables: Iterable[Any],
            progress: bool = True, **kwargs: Any) -> list[Any]:
        """Map ``func`` over the iterables on the engines; results in item order.

        A failing item raises :class:`~kubemagic.errors.RemoteItemError` as soon as it is
        known (the rest is cancelled), unless ``return_exceptions=True``.
        Ctrl-C / the notebook's stop button cancels pending work and keeps the engines.
        """
        handle = self.map_async(func, *iterables, **kwargs)
        return handle.result(progress=progress)

    # -- observation ----------------------------------------------------------------------
    def add_listener(self, callback: Callable[[str], None]) -> None:
        """``callback(topic)`` on changes: "state", "engines", "map", "progress"."""
        self._listeners.append(callback)

    def _notify(self, topic: str) -> None:
        for cb in list(self._listeners):
            try:
                cb(topic)
            except Exception:  # a broken display must not break the map
                log.debug("listener failed", exc_info=True)

    def logs(self, tail: int = 200) -> str:
        """Recent engine output (process logs, or pod logs on Kubernetes)."""
        if self._cluster is None or not self._cluster.engines:
            return ""
        text = self.launcher.get_output()
        return "\n".join(text.splitlines()[-tail:])

    def status(self) -> dict[str, Any]:
        """A plain-data summary (used by ``%kubemap status`` and the widget)."""
        self.process_events() if self.state == "running" else None
        return {
            "cluster_id": self.cluster_id,
            "backend": self.backend,
            "state": self.state,
            "requested": self._target,
            "ready": len(self.ready_ids()),
            "engines": self.engine_states() if self._cluster is not None else [],
            "replay": self.replay.summary(),
            "map": self.current_map.progress().__dict__ if self.current_map else None,
            "last_error": self.last_error,
            "notice": self.notice,
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
                f"{len(self.ready_ids())}/{self._target} engines>")


# -- helpers ---------------------------------------------------------------------------------
def import_statements(before: dict[str, Any], after: dict[str, Any],
                      imported: list[str]) -> str:
    """The import statements that reproduce, on an engine, what a block bound locally."""
    import types

    missing = object()
    lines = []
    for name, value in after.items():
        if before.get(name) is value and name in before:
            continue
        if isinstance(value, types.ModuleType):
            mod = value.__name__
            lines.append(f"import {mod}" if mod == name else f"import {mod} as {name}")
            continue
        # prefer the defining module (statistics re-exports fractions.Fraction), then the
        # most recent import
        home = getattr(value, "__module__", None)
        candidates = ([home] if home in imported else []) + list(reversed(imported))
        for mod in dict.fromkeys(candidates):
            source = sys.modules.get(mod)
            if source is not None and getattr(source, name, missing) is value:
                lines.append(f"from {mod} import {name}")
                break
    return "\n".join(lines)


def _check_count(value: Any, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{what} must be a whole number, not {value!r}",
                         fix=f"give an integer >= {minimum}")
    if value < minimum:
        raise UsageError(f"{what} must be at least {minimum}, not {value}",
                         fix=f"give an integer >= {minimum}")
    return value


def _check_chunksize(value: Any) -> int | str:
    if value == "auto":
        return value
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"chunksize must be a positive integer or 'auto', not {value!r}",
                         fix="use --chunksize auto (the default) or e.g. --chunksize 100")
    return value


def _materialize(iterables: tuple[Iterable[Any], ...]) -> list[tuple[Any, ...]]:
    """zip() the iterables into argument tuples, with a clear error for non-iterables."""
    for i, it in enumerate(iterables):
        try:
            iter(it)
        except TypeError:
            raise UsageError(
                f"argument {i + 1} to map is a {type(it).__name__}, which is not iterable",
                fix="pass a list, range, array or other iterable of items",
            ) from None
    return list(zip(*iterables))


def _as_config(d: dict[str, Any]) -> Any:
    from traitlets.config import Config

    return Config(d)


# -- one session per kernel ----------------------------------------------------------------
_live_sessions: "weakref.WeakSet[KubeCluster]" = weakref.WeakSet()
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


def set_current(session: KubeCluster | None) -> None:
    global _current
    _current = session


@atexit.register
def _stop_all() -> None:
    """Kernel shutdown or restart: stop every session (engines, pods, controller)."""
    for session in list(_live_sessions):
        with contextlib.suppress(Exception):
            session.stop()
