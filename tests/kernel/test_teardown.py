"""Kernel exit leaves nothing behind: SIGKILL, normal shutdown and restart (local engines)."""

from __future__ import annotations

import os
import signal
import time

import psutil

from ._kernel import Kernel

START = ("%load_ext kubemagic\nimport kubemagic, time\n"
         "s = kubemagic.KubeCluster(n=2, backend='local').start()\nprint(s.cluster_id)")


def processes_of(cluster_id: str) -> list[psutil.Process]:
    """Controller and engine processes started for this cluster (ipyparallel puts the
    cluster id in their environment as IPP_CLUSTER_ID)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.environ().get("IPP_CLUSTER_ID") == cluster_id:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def wait_gone(cluster_id: str, timeout: float) -> float:
    """Seconds until no process of the cluster is left (fails after ``timeout``)."""
    start = time.monotonic()
    while processes_of(cluster_id):
        assert time.monotonic() - start < timeout, [p.info for p in processes_of(cluster_id)]
        time.sleep(0.1)
    return time.monotonic() - start


def test_sigkill_during_map_leaves_no_controller_or_engine():
    k = Kernel()
    try:
        cluster_id = k.run(START).split()[-1]
        assert len(processes_of(cluster_id)) >= 3  # controller + 2 engines (+ nannies)
        pid = k.pid()
        k.submit("h = s.map_async(time.sleep, [0.2] * 200)")
        k.poll_iopub(1.0)
        os.kill(pid, signal.SIGKILL)
        took = wait_gone(cluster_id, timeout=30)
        print(f"processes gone {took:.2f} s after SIGKILL")
    finally:
        k.kc.stop_channels()
        k.km.cleanup_resources()


def test_shutdown_and_restart_stop_engines():
    k = Kernel()
    try:
        first = k.run(START).split()[-1]
        k.km.restart_kernel(now=False)
        wait_gone(first, timeout=30)
        k.kc.wait_for_ready(timeout=60)
        second = k.run(START).split()[-1]
        assert processes_of(second)
        k.km.shutdown_kernel(now=False)
        wait_gone(second, timeout=30)
    finally:
        k.kc.stop_channels()
