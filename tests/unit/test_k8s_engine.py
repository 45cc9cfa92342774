"""The engine pods' entrypoint, run as real processes against a real local controller.

Exit codes are the contract with the Job's podFailurePolicy: SIGTERM → 143 after
unregistering (the hub drops the engine at once), lost or unreachable controller → 17.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import ipyparallel as ipp
import pytest

from kubemagic.k8s.manifests import EXIT_CONTROLLER_GONE, EXIT_TERMINATED


def _engine(env, *args):
    return subprocess.Popen(
        [sys.executable, "-m", "kubemagic.k8s.engine", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture
def controller(tmp_path):
    loop = asyncio.new_event_loop()
    cluster = ipp.Cluster(
        n=0,
        profile_dir=str(tmp_path),
        controller_args=["--HeartMonitor.period=200"],
        shutdown_atexit=False,
    )
    loop.run_until_complete(cluster.start_controller())
    info = loop.run_until_complete(cluster.controller.get_connection_info())
    env = dict(os.environ, IPP_CONNECTION_INFO=json.dumps(info["engine"]))
    client = loop.run_until_complete(cluster.connect_client())
    yield cluster, client, env, loop
    client.close()
    if cluster.controller is not None:
        loop.run_until_complete(cluster.stop_controller())
    loop.close()


def test_sigterm_unregisters_and_exits_143(controller):
    _, client, env, _ = controller
    proc = _engine(env)
    try:
        client.wait_for_engines(1, timeout=60)
        assert client[:].apply_sync(lambda: 6 * 7) == [42]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == EXIT_TERMINATED
        t0 = time.monotonic()
        while client.ids and time.monotonic() - t0 < 3:
            time.sleep(0.02)
        # without unregistering, the hub keeps a dead engine until heartbeats are missed
        assert client.ids == [], "hub did not drop the engine promptly"
    finally:
        proc.kill()


def test_lost_controller_exits_17(controller):
    cluster, client, env, loop = controller
    proc = _engine(env, "--IPEngine.max_heartbeat_misses=3")
    try:
        client.wait_for_engines(1, timeout=60)
        client.close()
        loop.run_until_complete(cluster.stop_controller())
        assert proc.wait(30) == EXIT_CONTROLLER_GONE
    finally:
        proc.kill()


def test_unreachable_controller_exits_17(controller):
    cluster, client, env, loop = controller
    client.close()
    loop.run_until_complete(cluster.stop_controller())
    t0 = time.monotonic()
    proc = _engine(env, "--IPEngine.timeout=1")
    try:
        assert proc.wait(30) == EXIT_CONTROLLER_GONE
        assert time.monotonic() - t0 < 15
    finally:
        proc.kill()
