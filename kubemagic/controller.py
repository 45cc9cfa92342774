"""Start ipyparallel's controller and a Client for one session, from a BackendSpec.

The controller runs beside the kernel (a guarded subprocess that exits with the kernel);
engines come from the backend's launcher. The knobs here are the ones kubemagic needs from
ipyparallel for sub-second registration and loss detection, in one place.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import shutil
import sys
import tempfile
from typing import Any

import ipyparallel as ipp
from traitlets.config import Config

from ._guard import IO_THREADS_ENV, PARENT_PID_ENV
from ._loop import LoopThread
from .backends import BackendSpec
from .errors import SessionError

log = logging.getLogger(__name__)

#: heartbeat period (ms): ipyparallel's 3000 ms default makes registration wait up to
#: two beats and makes a dead engine take ~33 s to notice; 100 ms keeps both sub-second
HEARTBEAT_MS = 100
#: beats an engine may miss before the controller declares it dead (~2 s: fast enough to
#: requeue a lost engine's chunks, slow enough that a loaded 2-core machine does not
#: declare a healthy engine dead and shrink the fleet)
HEARTMONITOR_MISSES = 20
#: beats of a vanished controller an engine tolerates before exiting (~6 s)
ENGINE_HEARTBEAT_MISSES = 10
#: how long the controller may take to drop an engine that was shut down or killed
UNREGISTER_S = HEARTBEAT_MS * HEARTMONITOR_MISSES / 1000 + 5

#: at most this many ZeroMQ I/O threads in the controller (one per core up to it): with
#: CurveZMQ they encrypt the engines' copies of a push in parallel; a 100 MB push to 16
#: engines took 3.85 s instead of 4.49 s with 2 on a 2-core machine where the engines
#: decrypt on the same cores (bench/results/push_controller_2026-11-30.md)
MAX_IO_THREADS = 4


def io_threads() -> int:
    """ZeroMQ I/O threads for this kernel's controller: one per usable core, at most 4."""
    return min(MAX_IO_THREADS, len(os.sched_getaffinity(0)))

#: ipyparallel's controller, tied to the kernel's life, with kubemagic's two changes
_GUARDED_CONTROLLER_CMD = [sys.executable, "-m", "kubemagic._guard", "kubemagic._controller"]


def make_cluster(spec: BackendSpec, cluster_id: str, n: int, profile_dir: str) -> ipp.Cluster:
    """The ipyparallel Cluster for ``spec`` (nothing started yet)."""
    # the controller's own environment only: setting these in the kernel's would leak
    # into every later session and plain ipyparallel cluster of this kernel
    controller_env = {PARENT_PID_ENV: str(os.getpid()),
                      IO_THREADS_ENV: str(io_threads())}
    if spec.curve:
        controller_env["IPP_ENABLE_CURVE"] = "1"
    config: dict[str, Any] = {
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
    return ipp.Cluster(
        n=n,
        cluster_id=cluster_id,
        profile_dir=profile_dir,
        controller_ip=spec.controller_ip,
        controller_location=spec.controller_location,
        controller_args=[
            "--IPController.use_threads=True",
            # no result store: kubemagic keeps results itself, and the default
            # in-memory DB holds a copy of every push (~200 MB per 100 MB pushed)
            "--IPController.db_class=NoDB",
            # one broadcast scheduler instead of a root and two leaves: each scheduler hop
            # copies (and with CurveZMQ re-encrypts) every pushed buffer; 100 MB to 2 engines
            # through the socket went from 255 to 397 MB/s per engine (CurveZMQ: 66 to 113),
            # to 16 engines 1.12x faster (bench/results/push_controller_2026-11-30.md)
            "--IPController.broadcast_scheduler_depth=0",
            f"--HeartMonitor.period={HEARTBEAT_MS}",
            f"--HeartMonitor.max_heartmonitor_misses={HEARTMONITOR_MISSES}",
            *spec.controller_args,
        ],
        engine_launcher_class=spec.engine_launcher_class,
        shutdown_atexit=False,
        log_level=logging.ERROR,  # engine exit output goes to logs(), not stderr
        config=Config(config),
    )


class Controller:
    """The controller, the backend's engine set and the Client of one session.

    Started once, stopped once; ``stop`` removes the engines (pods, processes), the
    controller and its profile directory, whatever state the start reached.
    """

    def __init__(self, spec: BackendSpec, cluster_id: str, loop: LoopThread) -> None:
        self.spec = spec
        self.cluster_id = cluster_id
        self.client: ipp.Client | None = None
        self._loop = loop
        self._cluster: ipp.Cluster | None = None
        self.profile_dir = ""

    def start(self, n: int) -> ipp.Client:
        """Start the controller and ``n`` engines (not waiting for them); return the client."""
        self.profile_dir = tempfile.mkdtemp(prefix=f"kubemagic-{self.cluster_id}-")
        self._cluster = make_cluster(self.spec, self.cluster_id, n, self.profile_dir)
        self.client = self._loop.run(_start(self._cluster, self.spec, n))
        return self.client

    @property
    def launcher(self) -> Any:
        """The backend's engine launcher (one engine set per session)."""
        if self._cluster is None or not self._cluster.engines:
            raise SessionError("the session is not running", fix="call start() first")
        return next(iter(self._cluster.engines.values()))

    def logs(self, tail: int) -> str:
        """The last ``tail`` lines of engine output (process or pod logs)."""
        if self._cluster is None or not self._cluster.engines:
            return ""
        return "\n".join(self.launcher.get_output().splitlines()[-tail:])

    def stop(self) -> str:
        """Stop everything started; return what failed to stop ("" when all went)."""
        self.spec.release_ports()
        client, cluster = self.client, self._cluster
        self.client = self._cluster = None
        problem = ""
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        if cluster is not None:
            try:
                self._loop.run(cluster.stop_cluster(), timeout=120)
            except Exception as e:  # still remove what we can, but say what failed
                problem = f"stopping the cluster failed: {e}"
        if self.profile_dir:
            shutil.rmtree(self.profile_dir, ignore_errors=True)
        return problem


async def _start(cluster: ipp.Cluster, spec: BackendSpec, n: int) -> ipp.Client:
    """Start ``cluster``'s controller, then ``n`` engines; return a connected client.

    The caller holds ``cluster`` before this runs, so a failure part-way leaves nothing it
    cannot stop.
    """
    await cluster.start_controller()
    spec.release_ports()  # bound now: other kernels' probes see them taken
    await cluster.start_engines(n)
    # The client lives beside the controller: connect over loopback, not through the
    # address advertised to pods (it may be wrong -- that must fail the engines with a
    # diagnosis, not hang our own client).
    info = cluster.controller.get_connection_info()
    if inspect.isawaitable(info):
        info = await info
    client = ipp.Client(dict(info["client"], location="127.0.0.1"), cluster=cluster,
                        profile_dir=cluster.profile_dir, cluster_id=cluster.cluster_id)
    _quiet_late_replies(client)
    return client


def _quiet_late_replies(client: ipp.Client) -> None:
    """Drop, with a debug log line, a task's reply that arrives after its engine was declared
    dead, instead of ipyparallel printing "got stale result" and the whole message (or "got
    unknown result" once the session has forgotten the map's tasks).

    ipyparallel settles the tasks of an engine that unregisters or misses its heartbeats
    with an ``EngineError`` at once, and says itself that the real reply may come later
    (an engine starved of CPU, a pod that left just after replying). The session has then
    re-run that chunk already; the late reply changes nothing, but the client prints three
    lines (buffers included) from its IO thread into whatever cell runs.
    """
    handle = client._queue_handlers["apply_reply"]

    def handle_unless_late(msg: dict) -> None:
        if client._should_use_metadata_msg_id(msg):  # a coalesced broadcast reply
            msg_id = msg["metadata"].get("original_msg_id")
        else:
            msg_id = (msg.get("parent_header") or {}).get("msg_id")
        if msg_id not in client.outstanding:
            log.debug("dropped the late reply of task %s: its engine was declared dead", msg_id)
            return
        handle(msg)

    client._queue_handlers["apply_reply"] = handle_unless_late
