"""The session's controller process (kubemagic._controller): ipyparallel's controller with
ZeroMQ I/O threads set by the kernel and without init_hub's fixed pause, in a real session."""

from __future__ import annotations

import time

import psutil
import pytest
from ipyparallel.controller import app

import kubemagic
from kubemagic import _controller, controller


def test_the_pause_is_skipped_only_inside_the_block() -> None:
    with _controller.no_startup_pause():
        assert app.time.sleep is _controller._TimeWithoutSleep.sleep
        assert app.time.monotonic is time.monotonic  # the rest of the module is the real one
    assert app.time is time


def _controller_process() -> psutil.Process:
    """The session's controller: this process's child (its forked helpers are its own)."""
    (proc,) = [p for p in psutil.Process().children(recursive=True)
               if "kubemagic._controller" in " ".join(p.cmdline())
               and p.ppid() == psutil.Process().pid]
    return proc


def _zmq_io_threads(proc: psutil.Process) -> list[str]:
    names = []
    for t in proc.threads():
        with open(f"/proc/{proc.pid}/task/{t.id}/comm") as f:
            names.append(f.read().strip())
    return sorted(n for n in names if n.startswith("ZMQbg/IO/"))


@pytest.mark.parametrize("cap", [1, 2])
def test_controller_has_the_io_threads_the_kernel_sets(monkeypatch, cap: int) -> None:
    """With the cap at 2 on a machine of 2 or more cores, the controller's ZeroMQ context
    has two I/O threads (libzmq names them ZMQbg/IO/0, /1); at 1, one. The session works."""
    monkeypatch.setattr(controller, "MAX_IO_THREADS", cap)
    want = min(cap, len(psutil.Process().cpu_affinity()))
    s = kubemagic.KubeCluster(n=1, backend="local")
    s.start()
    try:
        assert _zmq_io_threads(_controller_process()) == [f"ZMQbg/IO/{i}" for i in range(want)]
        assert s.map(lambda x: x * 2, range(10), progress=False) == [x * 2 for x in range(10)]
    finally:
        s.stop()
