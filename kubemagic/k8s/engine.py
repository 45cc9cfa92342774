"""Engine pods' entrypoint: ``python -m kubemagic.k8s.engine [ipengine arguments]``.

A plain ``ipengine`` has two exits that hurt inside a Job:

* when its controller dies it exits 1 (heartbeats lost) or 255 (cannot register) — the
  same codes as a crash, so the Job keeps creating pods for a controller that is gone;
* on SIGTERM (pod deleted, evicted, scaled away) it leaves without telling the hub, which
  keeps dispatching to it until heartbeats are missed (~33 s at the default period).

This entrypoint runs ipengine in-process and changes exactly those: losing the controller
exits :data:`~kubemagic.k8s.manifests.EXIT_CONTROLLER_GONE` (the Job's podFailurePolicy
fails the Job on it) when the controller's port no longer accepts connections, else
:data:`~kubemagic.k8s.manifests.EXIT_CONTROLLER_SILENT` (this engine alone is replaced),
and SIGTERM unregisters from the hub, then exits
:data:`~kubemagic.k8s.manifests.EXIT_TERMINATED` (the policy replaces the pod without
counting a failure). The reason, with the last log lines, goes to the pod's termination
message, so it survives the pod for diagnostics.

SIGTERM while a chunk runs drains instead of exiting at once, so an evicted or drained pod
loses no finished work and makes nothing run twice: the running item finishes, the chunk
returns its results and hands the rest back (:func:`kubemagic.remote.hand_back_from_now`;
the kernel queues those items for other engines), a chunk that arrives later hands back
all its items, and once no task has run for :data:`LEAVE_SETTLE_S` the engine unregisters
and exits. An item still running near the end of the pod's grace period
(:data:`~kubemagic.k8s.manifests.GRACE_ENV`) is given up: the engine leaves anyway, and
the kernel re-runs that chunk as for a lost pod.

It also makes the engine reachable for signals without ``pods/exec`` (see :mod:`.relay`):
its zmq identity is its pod name, and it answers ``signal_request`` itself; and it says
when it has registered (:data:`~kubemagic.k8s.manifests.REGISTERED_MARK`), so a crash
before that is known as a crash at start-up.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable, NoReturn

from ipyparallel.engine.app import IPEngine
from ipyparallel.error import wrap_exception
from tornado.ioloop import PeriodicCallback
from traitlets import Bool, Float, default

from .. import remote
from .manifests import (
    EXIT_CONTROLLER_GONE,
    EXIT_CONTROLLER_SILENT,
    EXIT_TERMINATED,
    GRACE_ENV,
    POD_NAME_ENV,
    REGISTERED_MARK,
)

TERMINATION_LOG = "/dev/termination-log"
#: A leaving engine exits once no task has run for this long: zmq has sent its last reply
#: by then (the kernel must have it before the engine unregisters, or it would count the
#: chunk as lost), and a chunk that was already on its way has arrived and been handed back.
LEAVE_SETTLE_S = 0.5
#: It exits this long before its grace period ends even with an item still running (at most
#: a quarter of the period), so it can unregister before the kubelet's SIGKILL.
LEAVE_MARGIN_S = 2.0
#: The grace period assumed when the pod does not say (Kubernetes' own default).
DEFAULT_GRACE_S = 30.0
#: how long a lost engine waits for the controller's port to accept a connection before
#: it calls the controller gone (seconds)
CONTROLLER_CHECK_S = 3.0


class _RecentLines(logging.Handler):
    """Keeps the last log lines in memory for the termination message."""

    def __init__(self, size: int = 12) -> None:
        super().__init__()
        self.lines: collections.deque[str] = collections.deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


class KubernetesEngine(IPEngine):
    """``IPEngine`` with exit codes and SIGTERM handling suited to an Indexed Job."""

    # A pod may start before the network path to the kernel is up (CNI, NetworkPolicy
    # programming): wait a little longer than ipengine's 5 s before declaring the
    # controller unreachable — which fails the whole Job.
    timeout = Float(
        10.0,
        config=True,
        help="Seconds to wait for the controller's registration reply before exiting "
        f"with code {EXIT_CONTROLLER_GONE} (controller unreachable).",
    )

    # The nanny is a second Python process per engine (~0.4 s of CPU and of wall time before
    # registration). Its main job, reporting the engine's death, is done here by the
    # controller's heartbeats and by the Job, which sees the container exit. It remains
    # available for Client.send_signal: --IPEngine.enable_nanny.
    enable_nanny = Bool(
        False,
        config=True,
        help="Run ipyparallel's nanny process (needed only for Client.send_signal).",
    )

    @default("ident")
    def _pod_ident(self) -> str:
        """The pod's name, unique per engine process (a replaced pod gets a new name): the
        launcher addresses signal requests to it. Outside a pod, ipengine's random id."""
        return os.environ.get(POD_NAME_ENV) or self.session.session

    #: tasks running now (0 or 1: the engine runs one at a time)
    _tasks = 0
    #: when the last task ended (monotonic seconds)
    _last_task_end = 0.0
    #: when SIGTERM arrived while busy (monotonic seconds), else None
    _leaving_since: float | None = None
    #: the loop's check for the moment to leave (kept: a callback nobody holds may go)
    _leave_watch: PeriodicCallback | None = None
    #: one exit: the grace timer's thread and the main thread may both try
    _exit_lock = threading.RLock()

    async def complete_registration(self, msg: Any, connect: Any, maybe_tunnel: Any) -> None:
        await super().complete_registration(msg, connect, maybe_tunnel)
        if not self.enable_nanny:  # the nanny answers signal requests itself
            self.kernel.control_handlers["signal_request"] = self._signal_request
        handlers = self.kernel.shell_handlers
        handlers["apply_request"] = functools.partial(self._counted, handlers["apply_request"])
        # into the container's log, whatever the log level: the launcher tells crashes at
        # start-up from later ones by it
        os.write(self._container_stdout, f"{REGISTERED_MARK} as id {self.id}\n".encode())

    def _signal_request(self, stream: Any, ident: Any, parent: dict[str, Any]) -> None:
        """``signal_request`` (``Client.send_signal``, the launcher's ``signal``): confirm,
        then signal this process — what ipyparallel's nanny does from outside. Runs on the
        control thread; Python runs the handler in the main thread, where tasks run, so
        SIGINT interrupts a running task as it would a local engine's."""
        sig = parent["content"].get("sig")
        try:
            number = signal.Signals(getattr(signal, sig) if isinstance(sig, str) else sig)
        except Exception:
            self.session.send(stream, "signal_reply", wrap_exception(), parent=parent, ident=ident)
            return
        self.session.send(stream, "signal_reply", {"status": "ok"}, parent=parent, ident=ident)
        os.kill(os.getpid(), number)

    def initialize(self, argv: list[str] | None = None) -> None:
        # the container's stdout, kept before the kernel captures file descriptor 1 (what
        # is written there from then on goes to the client)
        self._container_stdout = os.dup(1)
        super().initialize(argv)
        self._recent = _RecentLines()
        self._recent.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.log.addHandler(self._recent)

    def abort(self) -> None:
        """Registration timed out: the controller is gone or unreachable from this pod,
        unless it still accepts connections (see :meth:`_lost_controller`)."""
        self._lost_controller(f"no registration reply from the controller at "
                              f"{self.registration_url} within {self.timeout:.0f} s")

    def _hb_monitor(self) -> None:
        super()._hb_monitor()
        if self.max_heartbeat_misses and self._hb_missed_beats >= self.max_heartbeat_misses:
            # ipengine has just asked its loop to stop (exit code 1, like a crash); leave
            # first, with the code that tells the Job what happened
            self._lost_controller(
                f"the controller at {self.registration_url} stopped sending heartbeats "
                f"({self.max_heartbeat_misses} checks of {self.hb_check_period} ms missed)")

    def _lost_controller(self, what: str) -> NoReturn:
        """Leave after losing the controller. The exit code fails the whole Job, so it is
        checked first: a controller whose port still accepts a connection is alive (a
        lost packet, a controller slow under load), and only this engine gives up, with
        a code the Job replaces; one that refuses or does not answer is gone (its kernel
        died) or unreachable (a NetworkPolicy), and the Job fails at once."""
        if controller_answers(self.registration_url):
            self._leave(EXIT_CONTROLLER_SILENT,
                        f"{what}, although it accepts connections: this engine leaves, the "
                        "Job starts another", unregister=True)
        self._leave(EXIT_CONTROLLER_GONE,
                    f"{what}: the controller is gone or unreachable from this pod",
                    unregister=False)

    def _counted(self, handler: Callable[..., None], stream: Any, ident: Any,
                 parent: dict[str, Any]) -> None:
        """Run one task (``apply_request``: a chunk, a push), counted, so that SIGTERM
        knows whether work is running and a leaving engine knows when it has ended. The
        handler has queued the reply when it returns."""
        self._tasks += 1
        try:
            handler(stream, ident, parent)
        finally:
            self._tasks -= 1
            self._last_task_end = time.monotonic()

    def _signal_stop(self, sig: int, frame: Any) -> None:
        """SIGTERM. Idle: tell the hub we are leaving, so it drops us now, then exit.
        Busy: finish the running item and hand the rest back first (see the module
        docstring). Busy includes the moment between two chunks of a map (a task ended
        less than LEAVE_SETTLE_S ago), when the next chunk may already be on its way and
        would be lost. A second SIGTERM changes nothing."""
        if self._leaving_since is not None:
            return
        if not self._tasks and time.monotonic() - self._last_task_end >= LEAVE_SETTLE_S:
            self._leave(EXIT_TERMINATED, f"received signal {sig}: pod terminating",
                        unregister=True)
        self._leaving_since = since = time.monotonic()
        remote.hand_back_from_now()
        grace = _grace_seconds()
        budget = grace - min(LEAVE_MARGIN_S, grace / 4)
        self.log.warning("received signal %d while busy: finishing the running item, "
                         "handing the rest back, leaving within %.1f s", sig, budget)
        # the main thread runs the task; the loop checks once it is back (this call is
        # safe in a signal handler)
        self.loop.asyncio_loop.call_soon_threadsafe(self._watch_leaving, since)
        timer = threading.Timer(budget, self._leave_late, args=(grace,))
        timer.daemon = True
        timer.start()

    def _watch_leaving(self, since: float) -> None:
        self._leave_watch = PeriodicCallback(functools.partial(self._leave_when_idle, since), 50)
        self._leave_watch.start()

    def _leave_when_idle(self, since: float) -> None:
        """On the loop, after SIGTERM: leave once no task has run for LEAVE_SETTLE_S."""
        if self._tasks or time.monotonic() - self._last_task_end < LEAVE_SETTLE_S:
            return
        self._leave(EXIT_TERMINATED,
                    f"pod terminating: handed back {remote.handed_back_items()} item(s) not "
                    f"yet run, left {time.monotonic() - since:.1f} s after the signal",
                    unregister=True)

    def _leave_late(self, grace: float) -> None:
        """Timer thread: an item is still running near the end of the grace period. Leave
        before the kubelet's SIGKILL; the kernel re-runs the chunk as for a lost pod."""
        self._leave(EXIT_TERMINATED,
                    f"pod terminating: an item still ran near the end of the {grace:.0f} s "
                    "grace period; its chunk is lost and runs again on another engine",
                    unregister=True)

    def _leave(self, code: int, reason: str, *, unregister: bool) -> NoReturn:
        """Log why, record the termination message, optionally unregister, exit at once.

        ``os._exit``: the engine may be mid-task, and zmq sockets with unsent messages to
        a dead controller would block a normal interpreter exit forever.
        """
        self._exit_lock.acquire()  # never released: whoever holds it exits the process
        self.log.critical("%s; exiting with code %d", reason, code)
        if unregister and getattr(self, "registrar", None) is not None and self.id is not None:
            self._unregister()
        _write_termination_message(reason, list(getattr(self, "_recent", _RecentLines()).lines))
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                if stream is not None:
                    stream.flush()
            except Exception:
                pass
        os._exit(code)

    def _unregister(self) -> None:
        """Send ``unregistration_request`` and wait (≤ 1 s) until zmq has handed it to TCP."""
        try:
            msg = self.session.msg("unregistration_request", content={"id": self.id})
            frames = self.session.serialize(msg)
            tracker = self.registrar.send_multipart(frames, copy=False, track=True)
            tracker.wait(1.0)
        except Exception as e:  # best effort: the hub falls back to missed heartbeats
            self.log.warning("could not unregister: %r", e)


def controller_answers(url: str, timeout: float = CONTROLLER_CHECK_S) -> bool:
    """Whether the controller at ``url`` (``tcp://host:port``) accepts a TCP connection
    within ``timeout`` seconds: a refused or unanswered connection means it is gone or
    cut off from this pod."""
    host, _, port = url.partition("://")[2].rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _grace_seconds() -> float:
    """The pod's grace period between SIGTERM and SIGKILL, as its manifest says."""
    try:
        return max(0.0, float(os.environ.get(GRACE_ENV, DEFAULT_GRACE_S)))
    except ValueError:
        return DEFAULT_GRACE_S


def _write_termination_message(reason: str, recent: list[str]) -> None:
    """Put the reason and the last log lines where the kubelet reads the termination
    message (it survives in the pod status after the container is gone)."""
    if not os.path.exists(TERMINATION_LOG):
        return  # not in a container (the kubelet mounts this file): the log has it
    text = "\n".join([reason, *recent])[-3800:]
    try:
        with open(TERMINATION_LOG, "w") as f:
            f.write(text)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> None:
    """Run one engine until it is told to stop; exit codes as described above."""
    app = KubernetesEngine.instance()
    app.initialize(argv)
    app.start()


if __name__ == "__main__":
    main()
