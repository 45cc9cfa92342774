"""The engine pods' entrypoint, run as real processes against a real local controller.

Exit codes are the contract with the Job's podFailurePolicy: SIGTERM → 143 after
unregistering (the hub drops the engine at once), lost or unreachable controller → 17,
a controller that stops answering while its port still accepts connections → 18.
Signals reach the engine through the controller (:mod:`kubemagic.k8s.relay`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import ipyparallel as ipp
import psutil
import pytest

from kubemagic.k8s.engine import controller_answers
from kubemagic.k8s.manifests import (
    EXIT_CONTROLLER_GONE,
    EXIT_CONTROLLER_SILENT,
    EXIT_TERMINATED,
    REGISTERED_MARK,
)
from kubemagic.k8s.relay import send_signal


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


def _stalled(cluster):
    """The controller's process stopped (SIGSTOP), as one starved of CPU: its ports still
    accept connections (the kernel queues them), but it answers nothing."""
    main = psutil.Process(cluster.controller.process.pid)
    procs = [main, *main.children(recursive=True)]  # its heart monitor and schedulers too
    for p in procs:
        p.suspend()

    def resume() -> None:
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.resume()

    return resume


def test_a_live_controller_that_stops_answering_replaces_only_the_engine(controller):
    """Heartbeats stop but the controller's port answers: exit 18 (the Job replaces this
    pod), not 17 (which fails the whole Job and every other engine with it)."""
    cluster, client, env, _ = controller
    proc = _engine(env, "--IPEngine.max_heartbeat_misses=3")
    try:
        client.wait_for_engines(1, timeout=60)
        resume = _stalled(cluster)
        try:
            assert proc.wait(30) == EXIT_CONTROLLER_SILENT
        finally:
            resume()
    finally:
        proc.kill()


def test_no_registration_reply_from_a_live_controller_exits_18(controller):
    cluster, _, env, _ = controller
    resume = _stalled(cluster)
    try:
        proc = _engine(env, "--IPEngine.timeout=1")
        try:
            assert proc.wait(30) == EXIT_CONTROLLER_SILENT
        finally:
            proc.kill()
    finally:
        resume()


def test_controller_answers_tells_a_listening_port_from_a_closed_one():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert controller_answers(f"tcp://127.0.0.1:{port}", timeout=2)
    assert not controller_answers(f"tcp://127.0.0.1:{port}", timeout=2)  # closed: refused
    assert not controller_answers("tcp://127.0.0.1:notaport", timeout=2)


@ipp.interactive  # pickled by value: the engine runs it without importing the tests
def _sleep_unless_interrupted(started, seconds):
    import pathlib
    import time

    pathlib.Path(started).touch()
    try:
        time.sleep(seconds)
    except KeyboardInterrupt:
        return "interrupted"
    return "slept"


def test_signals_reach_the_engine_through_the_controller_by_pod_name(controller, tmp_path):
    """What the launcher's signal() does without pods/exec: ipyparallel's signal_request,
    addressed to the engine's identity (its pod name), answered by the engine itself."""
    cluster, client, env, _ = controller
    client_file = cluster.controller.connection_files["client"]
    proc = _engine({**env, "KUBEMAGIC_POD_NAME": "kubemagic-x-0-abcde"})
    try:
        client.wait_for_engines(1, timeout=60)
        started = tmp_path / "started"
        ar = client[:].apply_async(_sleep_unless_interrupted, str(started), 60)
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        refused, silent = send_signal(
            client_file, ["kubemagic-x-0-abcde", "kubemagic-x-1-gone"], signal.SIGINT, timeout=2
        )
        assert (refused, silent) == ({}, ["kubemagic-x-1-gone"])
        assert ar.get(timeout=30) == ["interrupted"]  # the task, not the engine
        refused, _ = send_signal(client_file, ["kubemagic-x-0-abcde"], 12345, timeout=10)
        assert "ValueError" in refused.pop("kubemagic-x-0-abcde") and not refused
        assert client[:].apply_sync(lambda: 6 * 7) == [42]
    finally:
        proc.kill()


def test_the_container_log_says_when_the_engine_registered(controller, tmp_path):
    """The launcher tells a crash at start-up from a later one by this line, which must
    reach the container's log even though the kernel captures stdout for the client."""
    _, client, env, _ = controller
    log = tmp_path / "container.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "kubemagic.k8s.engine",
                                 "--log-level=WARN"], env=env, stdout=out, stderr=out)
    try:
        client.wait_for_engines(1, timeout=60)
        assert client[:].apply_sync(lambda: print("to the client") or 1) == [1]
    finally:
        proc.kill()
        proc.wait(15)
    text = log.read_text()
    assert f"{REGISTERED_MARK} as id 0" in text and "to the client" not in text
