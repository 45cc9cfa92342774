"""Engine pods' entrypoint: ``python -m kubemagic.k8s.engine [ipengine arguments]``.

A plain ``ipengine`` has two exits that hurt inside a Job:

* when its controller dies it exits 1 (heartbeats lost) or 255 (cannot register) — the
  same codes as a crash, so the Job keeps creating pods for a controller that is gone;
* on SIGTERM (pod deleted, evicted, scaled away) it leaves without telling the hub, which
  keeps dispatching to it until heartbeats are missed (~33 s at the default period).

This entrypoint runs ipengine in-process and changes exactly those: losing the controller
exits :data:`~kubemagic.k8s.manifests.EXIT_CONTROLLER_GONE` (the Job's podFailurePolicy
fails the Job on it), and SIGTERM unregisters from the hub, then exits
:data:`~kubemagic.k8s.manifests.EXIT_TERMINATED` (the policy replaces the pod without
counting a failure). The reason, with the last log lines, goes to the pod's termination
message, so it survives the pod for diagnostics.

It also makes the engine reachable for signals without ``pods/exec`` (see :mod:`.relay`):
its zmq identity is its pod name, and it answers ``signal_request`` itself; and it says
when it has registered (:data:`~kubemagic.k8s.manifests.REGISTERED_MARK`), so a crash
before that is known as a crash at start-up.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import sys
from typing import Any

from ipyparallel.engine.app import IPEngine
from ipyparallel.error import wrap_exception
from traitlets import Bool, Float, default

from .manifests import EXIT_CONTROLLER_GONE, EXIT_TERMINATED, POD_NAME_ENV, REGISTERED_MARK

TERMINATION_LOG = "/dev/termination-log"


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

    async def complete_registration(self, msg: Any, connect: Any, maybe_tunnel: Any) -> None:
        await super().complete_registration(msg, connect, maybe_tunnel)
        if not self.enable_nanny:  # the nanny answers signal requests itself
            self.kernel.control_handlers["signal_request"] = self._signal_request
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
        """Registration timed out: the controller is unreachable from this pod."""
        self._leave(
            EXIT_CONTROLLER_GONE,
            f"no registration reply from the controller at {self.registration_url} within "
            f"{self.timeout:.0f} s: the controller is unreachable from this pod",
            unregister=False,
        )

    def _hb_monitor(self) -> None:
        super()._hb_monitor()
        if self.max_heartbeat_misses and self._hb_missed_beats >= self.max_heartbeat_misses:
            # ipengine has just asked its loop to stop (exit code 1, like a crash); leave
            # first, with the code that tells the Job its controller is gone.
            self._leave(
                EXIT_CONTROLLER_GONE,
                f"the controller at {self.registration_url} stopped sending heartbeats "
                f"({self.max_heartbeat_misses} checks of {self.hb_check_period} ms missed)",
                unregister=False,
            )

    def _signal_stop(self, sig: int, frame: Any) -> None:
        """SIGTERM: tell the hub we are leaving, so it drops us now, then exit."""
        self._leave(EXIT_TERMINATED, f"received signal {sig}: pod terminating", unregister=True)

    def _leave(self, code: int, reason: str, *, unregister: bool) -> None:
        """Log why, record the termination message, optionally unregister, exit at once.

        ``os._exit``: the engine may be mid-task, and zmq sockets with unsent messages to
        a dead controller would block a normal interpreter exit forever.
        """
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
