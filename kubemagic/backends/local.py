"""Local engines: the embedded default when there is no cluster.

Engines are ``ipengine`` processes on this machine, one per slot, each started through
``kubemagic._guard`` so it dies with the kernel (ipyparallel starts them in a new session,
where they would otherwise outlive a SIGKILLed kernel by minutes).

By default engines are forked from one process that imported their modules once
(:mod:`kubemagic._forkserver`; 64 engines on 2 cores start in a third of the time): each
slot's process is then a small stand-in (:mod:`kubemagic._forkclient`) that relays signals
to its engine and exits as it does, so everything here still watches one process per slot.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import sys
import time
import weakref
from dataclasses import dataclass
from typing import Any

from ipyparallel.cluster.launcher import LocalEngineLauncher, LocalEngineSetLauncher
from traitlets import Bool, default

from .._forkserver import ForkServer
from .._guard import PARENT_PID_ENV
from ..deaths import Death, of_process
from . import ENGINE_INDEX_ENV, Backend, BackendSpec
from .options import layer_values, option, parse_key_values, parse_options_of

#: what ipengine runs; forked engines run it in the fork server
ENGINE_MODULE = "ipyparallel.engine"
#: ``python -m kubemagic._guard ipyparallel.engine`` — ipengine, tied to the kernel's life
GUARDED_ENGINE_CMD = [sys.executable, "-m", "kubemagic._guard", ENGINE_MODULE]
#: variables the launcher sets for every engine: a user's value would be overwritten
RESERVED_ENV = frozenset({ENGINE_INDEX_ENV, PARENT_PID_ENV})


def _env(value: Any) -> dict[str, str]:
    return parse_key_values("env", value, env_names=True, reserved=RESERVED_ENV)


@dataclass(frozen=True)
class LocalOptions:
    """The local backend's options, declared once (see :func:`kubemagic.backends.options.option`).

    Any option of another backend is refused by name (the user expected pods, say), not
    ignored.
    """

    env: dict[str, str] = option(
        parse=_env, help="extra environment variables of the engines",
        metavar="NAME=VALUE[,...]", layer="launcher", default={}, target="environment",
    )


def local_backend(**options: Any) -> BackendSpec:
    """The spec for local engines; ``options`` are :class:`LocalOptions`' fields."""
    opts = parse_options_of(LocalOptions, "local", options)
    return BackendSpec(
        name="local",
        engine_launcher_class=ScalableLocalEngineSetLauncher,
        engines_share_host=True,
        config={
            "ScalableLocalEngineSetLauncher": layer_values(opts, "launcher"),
            # engines start at once and read the connection file themselves, so their
            # imports overlap the controller's boot; kubemagic._guard makes them wait
            # until the controller has written the whole file
            "Cluster": {"send_engines_connection_env": False},
        },
        # the nanny is a second Python process per engine, for remote signalling that
        # kubemagic does not use; a dead engine is noticed by heartbeat instead
        engine_args=["--IPEngine.enable_nanny=False"],
        shutdown_removed_engines=True,
        default_retries=1,  # an OOM-killed local engine costs a retry, not the map
        start_timeout=60.0,
    )


#: an engine that dies this soon after its start (seconds), before it registered, counts
#: towards a crash loop
YOUNG_DEATH_S = 10.0
#: what ipengine logs once registered: a death after it is no failure to start (an item
#: that kills its engine, a kill by hand)
REGISTERED_LINE = "Completed registration"
#: young deaths in a row after registering (items that kill their engine, re-run by a
#: user) after which a slot gets its new engine only after a pause
QUICK_DEATHS_BEFORE_PAUSE = 10
#: the longest such pause (seconds)
REFILL_PAUSE_MAX_S = 30.0
#: exit statuses kept for :meth:`ScalableLocalEngineSetLauncher.engine_death`
EXITS_KEPT = 256
#: young deaths in a row after which a slot is left empty
CRASH_LOOP_DEATHS = 3

#: the ``local`` entry point of ``kubemagic.backends``: always available, ``auto``'s last
#: choice
BACKEND = Backend(
    where="this machine", options=LocalOptions, make_spec=local_backend,
    available=lambda: True, advice="add --backend local", auto_rank=0,
)


class ScalableLocalEngineSetLauncher(LocalEngineSetLauncher):
    """A resizable set of local engines, one process per slot.

    Implements the session's ``ScalableEngineLauncher`` protocol on top of ipyparallel's
    ``LocalEngineSetLauncher``: each engine gets its slot in ``KUBEMAGIC_ENGINE_INDEX``,
    engines start without the inherited 0.1 s stagger, and ``scale(n)`` adds or removes
    slots at the top end.
    """

    fork_engines = Bool(
        True, config=True,
        help="""Fork engines from one process that imported their modules once (a fork
        server), instead of starting a Python for each: much less CPU per engine started.
        Only with the default engine_cmd; if the fork server cannot start, engines start
        on their own.""",
    )

    @default("engine_cmd")
    def _default_engine_cmd(self) -> list[str]:
        return list(GUARDED_ENGINE_CMD)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: engines told to stop whose exit may not be reported yet
        self._leaving: weakref.WeakSet[LocalEngineLauncher] = weakref.WeakSet()
        self._stopping = False  # the whole set is going: dead engines are not replaced
        #: per slot, when its engine started and how many in a row died young
        self._started: dict[str, float] = {}
        self._young_deaths: dict[str, int] = {}
        self._quick_deaths: dict[str, int] = {}  # the same, after registering
        #: engines killed on purpose (stuck in an item): replaced, never a crash
        self._killed: weakref.WeakSet[LocalEngineLauncher] = weakref.WeakSet()
        #: pid -> exit status of engines that ended (negative: killed by that signal)
        self._exits: dict[int, int | None] = {}
        self._fork_server: ForkServer | None = None
        self._fork_failed = False  # it could not start, or died: engines start on their own

    def start(self, n: int) -> list[Any]:
        self.n = n
        started = [self._start_slot(i) for i in range(n)]
        self.notify_start(started)
        return started

    def _start_slot(self, index: int) -> Any:
        identifier = str(index)
        env = dict(self.environment)
        env[ENGINE_INDEX_ENV] = identifier
        env[PARENT_PID_ENV] = str(os.getpid())
        el = self.launchers[identifier] = LocalEngineLauncher(
            work_dir=self.work_dir,
            parent=self,
            log=self.log,
            profile_dir=self.profile_dir,
            cluster_id=self.cluster_id,
            environment=env,
            identifier=identifier,
            output_file=os.path.join(
                self.profile_dir, "log", f"ipengine-{self.cluster_id}-{index}.log"
            ),
        )
        el.engine_cmd = self._slot_cmd(el)
        el.engine_args = list(self.engine_args)
        el.on_stop(functools.partial(self._notice_engine_stopped, el))
        self._started[identifier] = time.monotonic()
        return el.start()

    def _slot_cmd(self, slot: LocalEngineLauncher) -> list[str]:
        """The command of a slot's process: a fork server's client, else the engine."""
        if not self.fork_engines or self.engine_cmd != GUARDED_ENGINE_CMD or self._fork_failed:
            return list(self.engine_cmd)
        if self._fork_server is not None and not self._fork_server.alive():
            self.log.debug("engine fork server exited with %s (see %s): engines start on "
                           "their own", self._fork_server.process.returncode,
                           self._fork_server.log_path)
            self._fork_failed = True
            return list(self.engine_cmd)
        if self._fork_server is None:
            env = dict(os.environ, **slot.get_env())
            del env[ENGINE_INDEX_ENV]
            log_path = os.path.join(self.profile_dir, "log",
                                    f"ipengine-{self.cluster_id}-forkserver.log")
            try:
                self._fork_server = ForkServer(ENGINE_MODULE, env, self.work_dir, log_path)
            except Exception as e:
                self.log.debug("engine fork server did not start (%s): engines start on "
                               "their own", e, exc_info=self.log.isEnabledFor(logging.DEBUG))
                self._fork_failed = True
                return list(self.engine_cmd)
        return self._fork_server.client_cmd()

    def _engine_pid(self, slot: LocalEngineLauncher) -> int:
        """The pid of the slot's engine: its process's, or the one forked for it."""
        forked = self._fork_server.engine_pid(slot.pid) if self._fork_server else None
        return forked or slot.pid

    def _notice_engine_stopped(self, launcher: LocalEngineLauncher, data: dict[str, Any]) -> None:
        # unlike the parent class, an empty set is not "stopped": it can scale up again.
        # The slot may already hold a newer engine (scaled down and up again quickly):
        # only the launcher that stopped leaves it.
        identifier = data["identifier"]
        if self.launchers.get(identifier) is launcher:
            del self.launchers[identifier]
        self.outputs[identifier] = launcher.get_output()
        self.stop_data.setdefault("engines", {})[identifier] = data
        pid = data.get("pid", launcher.pid)
        self._exits[pid] = self._exits[self._engine_pid(launcher)] = data.get("exit_code")
        if self._fork_server is not None:
            self._fork_server.forget(pid)
        while len(self._exits) > EXITS_KEPT:
            del self._exits[next(iter(self._exits))]
        self._replace(identifier, launcher)

    def _replace(self, identifier: str, launcher: LocalEngineLauncher) -> None:
        """An engine that died on its own (killed for memory, a crash) is replaced in its
        slot, as a Kubernetes Job replaces a pod: the fleet keeps its size.

        One that keeps dying within seconds of its start, before it registered, is a crash
        loop, not bad luck: the slot stays empty and :meth:`diagnose` says why. One that
        had registered was killed by an item (or by the replayed code): it is replaced at
        once, but after more than :data:`QUICK_DEATHS_BEFORE_PAUSE` such young deaths in
        a row only after a pause that doubles (1, 2, 4 ... s), so code that kills every new
        engine does not keep the machine busy starting them. One killed on purpose (an
        item stuck in it) is replaced at once."""
        if (self._stopping or launcher in self._leaving or int(identifier) >= self.n
                or identifier in self.launchers):
            return
        young = (launcher not in self._killed
                 and time.monotonic() - self._started.get(identifier, 0.0) < YOUNG_DEATH_S)
        registered = REGISTERED_LINE in self.outputs.get(identifier, "")
        crashes = self._young_deaths[identifier] = (
            self._young_deaths.get(identifier, 0) + 1 if young and not registered else 0)
        quick = self._quick_deaths[identifier] = (
            self._quick_deaths.get(identifier, 0) + 1 if young and registered else 0)
        if crashes >= CRASH_LOOP_DEATHS:
            return
        if quick > QUICK_DEATHS_BEFORE_PAUSE:
            pause = min(REFILL_PAUSE_MAX_S, 2.0 ** (quick - QUICK_DEATHS_BEFORE_PAUSE - 1))
            self.loop.call_later(pause, self._refill, int(identifier))
        else:
            self._start_slot(int(identifier))

    def _refill(self, index: int) -> None:
        """Start the engine of slot ``index`` after a pause, unless it is no longer wanted."""
        if not self._stopping and index < self.n and str(index) not in self.launchers:
            self._start_slot(index)

    async def stop(self) -> None:
        self._stopping = True
        try:
            await super().stop()
        finally:
            server, self._fork_server = self._fork_server, None
            if server is not None:
                await asyncio.get_running_loop().run_in_executor(None, server.stop)

    async def scale(self, n: int) -> None:
        """Start missing slots below ``n``; terminate slots ``>= n`` and wait for them.

        A slot whose engine is on its way out (stopped, not yet reported) counts as
        missing: scaling 2 -> 0 -> 2 in quick succession must start two new engines.
        """
        for i in range(n):
            el = self.launchers.get(str(i))
            if el is None or el.state != "running" or el in self._leaving:
                self._start_slot(i)
        doomed = [el for ident, el in list(self.launchers.items())
                  if int(ident) >= n and el.state == "running" and el not in self._leaving]
        self._leaving.update(doomed)
        for el in doomed:
            el.signal(signal.SIGTERM)
        await asyncio.gather(*(el.join(timeout=10) for el in doomed))
        self.n = n

    def signal_engine(self, engine: Any, sig: int) -> bool:
        """Signal the process of ``engine`` (found by its pid among the running slots: a
        forked engine's slot process relays the signal); after SIGKILL its slot gets a new
        engine at once (see :meth:`_replace`)."""
        el = next((el for el in list(self.launchers.values())
                   if engine.pid in (el.pid, self._engine_pid(el)) and el.state == "running"),
                  None)
        if el is None:
            return False
        if sig == signal.SIGKILL:
            self._killed.add(el)
        try:
            el.signal(sig)
        except Exception:  # it ended meanwhile: nothing left to signal
            return False
        return True

    def engine_death(self, engine: Any) -> Death | None:
        """How the process of ``engine`` ended, once the launcher has seen it exit."""
        if engine.pid not in self._exits:
            return None
        return of_process(self._exits[engine.pid])

    def engine_states(self) -> list[dict[str, Any]]:
        states = []
        for ident, el in sorted(self.launchers.items(), key=lambda kv: int(kv[0])):
            states.append(
                {
                    "index": int(ident),
                    "name": f"pid {el.pid}",
                    "phase": "Running" if el.state == "running" else el.state,
                    "reason": "",
                }
            )
        return states

    async def refusal(self, since: float) -> None:
        """Local processes are never refused by a platform policy."""
        return None

    async def diagnose(self) -> str:
        lines = []
        for ident, data in sorted(self.stop_data.get("engines", {}).items()):
            code = data.get("exit_code")
            why = " (killed: out of memory?)" if code in (-9, 137) else ""
            lines.append(f"engine slot {ident} exited with code {code}{why}")
        output = self.get_output()
        if output:
            lines.append("last engine output:\n" + "\n".join(output.splitlines()[-20:]))
        return "\n".join(lines) or "local engines are running but have not registered yet"
