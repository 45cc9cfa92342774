"""An engine pod the controller dropped while it still runs is replaced (real cluster).

A machine starved of CPU can make a healthy engine miss its heartbeats (the bench saw it
with 32 pods starting on 2 cores): the controller drops it for good, the engine is not
told, and its pod runs on, idle, while the fleet stays one short. Frozen here with SIGSTOP
(the container's processes are the host's), it is dropped; thawed, its pod must be deleted
and the Job's replacement must join.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from kubemagic.reaper import REAP_AFTER_S

from ._support import clean_process_env, engine_pods, make_tenant, new_session, wait_for

pytestmark = pytest.mark.cluster


def _engine_pid(pod_name: str) -> int:
    """The host pid of the engine process of ``pod_name`` (it has the pod's name in its
    environment)."""
    needle = f"KUBEMAGIC_POD_NAME={pod_name}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in environ and b"python" in cmdline:
            return int(proc.name)
    raise AssertionError(f"no engine process of pod {pod_name} on this host")


def test_a_silent_engine_pod_is_replaced(k8s_cluster):
    tenant = make_tenant(k8s_cluster, "silent")
    with clean_process_env():
        s = new_session(k8s_cluster, tenant, n=2, idle_timeout=0).start()
        try:
            victim = sorted(p.metadata.name for p in engine_pods(k8s_cluster, tenant.namespace,
                                                                s.cluster_id))[0]
            pid = _engine_pid(victim)
            os.kill(pid, signal.SIGSTOP)  # at once: maybe before it answered its first task
            wait_for(lambda: len(s.ready_ids()) == 1, 30, "the frozen engine dropped")
            os.kill(pid, signal.SIGCONT)
            thawed = time.monotonic()

            def replaced() -> bool:
                pods = [p for p in engine_pods(k8s_cluster, tenant.namespace, s.cluster_id)
                        if p.status.phase == "Running" and not p.metadata.deletion_timestamp]
                return (victim not in {p.metadata.name for p in pods} and len(pods) == 2
                        and len(s.ready_ids()) == 2)
            wait_for(replaced, REAP_AFTER_S + 90, "the silent pod replaced and its engine joined")
            print(f"\nsilent engine pod replaced, new engine joined {time.monotonic() - thawed:.1f} s "
                  "after it was thawed")
            assert sorted(s.map(abs, range(-6, 0), progress=False)) == list(range(1, 7))
        finally:
            s.stop()
