"""SIGTERM during a chunk, on a real engine process (the pods' entrypoint) and a real local
controller: the running item finishes, the rest of the chunk and a chunk queued behind it
come back handed over, and only then does the engine unregister and exit 143. An item
outliving the grace period is given up before the kubelet's SIGKILL would come."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import ipyparallel as ipp
import pytest

from kubemagic.k8s.engine import LEAVE_SETTLE_S
from kubemagic.k8s.manifests import EXIT_TERMINATED, GRACE_ENV
from kubemagic.remote import run_chunk

from .test_engine import controller  # noqa: F401 - the fixture: a real local controller


@ipp.interactive  # pickled by value: the engine runs it without importing the tests
def slow_item(x, started, seconds):
    import pathlib
    import time

    pathlib.Path(started).touch()
    time.sleep(seconds)
    return x * 10


def _engine(env, grace, log=os.devnull):
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "kubemagic.k8s.engine"],
                                env={**env, GRACE_ENV: str(grace)}, stdout=out, stderr=out)


def _when_started(path, timeout=60):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, "the chunk never started"
        time.sleep(0.01)


def test_sigterm_mid_chunk_hands_back_the_rest_then_exits_143(controller, tmp_path):  # noqa: F811
    _, client, env, _ = controller
    log = tmp_path / "engine.log"
    proc = _engine(env, grace=30, log=log)
    try:
        client.wait_for_engines(1, timeout=60)
        view = client[0]
        started = tmp_path / "started"
        first = view.apply_async(run_chunk, slow_item,
                                 [(x, str(started), 0.2) for x in range(10)], True, 0)
        queued = view.apply_async(run_chunk, slow_item,
                                  [(x, str(tmp_path / "never"), 0.2) for x in range(10, 15)],
                                  True, 10)
        _when_started(started)
        time.sleep(0.3)  # inside the second item
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)

        results, first_failure, _, handed_back = first.get(timeout=30)
        k = len(results)
        assert 1 <= k < 10 and handed_back == k and first_failure == -1, (k, handed_back)
        assert results == [x * 10 for x in range(k)]
        # the chunk behind it arrived after the signal: handed back whole, nothing run
        assert queued.get(timeout=30)[0::3] == ([], 0)
        assert not (tmp_path / "never").exists()

        assert proc.wait(30) == EXIT_TERMINATED
        print(f"\nhanded back {10 - k} + 5 items; the engine exited "
              f"{time.monotonic() - signalled:.2f} s after SIGTERM")
        deadline = time.monotonic() + 5
        while client.ids and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.ids == [], "the leaving engine did not unregister"
    finally:
        proc.kill()
    assert f"handed back {10 - k + 5} item(s) not yet run" in log.read_text()


def test_an_item_outliving_the_grace_period_is_given_up_before_sigkill(controller, tmp_path):  # noqa: F811
    _, client, env, _ = controller
    proc = _engine(env, grace=2)
    try:
        client.wait_for_engines(1, timeout=60)
        started = tmp_path / "started"
        ar = client[0].apply_async(run_chunk, slow_item, [(0, str(started), 120)], True, 0)
        _when_started(started)
        proc.send_signal(signal.SIGTERM)
        # without the grace timer the engine would sleep 120 s, then hand back nothing
        assert proc.wait(20) == EXIT_TERMINATED
        with pytest.raises(ipp.error.RemoteError) as lost:  # the kernel re-runs it elsewhere
            ar.get(timeout=30)
        assert lost.value.ename in ("EngineError", "DeadEngineError"), lost.value
    finally:
        proc.kill()


def test_an_idle_engine_still_exits_at_once(controller, tmp_path):  # noqa: F811
    _, client, env, _ = controller
    log = tmp_path / "engine.log"
    proc = _engine(env, grace=30, log=log)
    try:
        client.wait_for_engines(1, timeout=60)
        assert client[0].apply_sync(run_chunk, slow_item, [(1, os.devnull, 0)], True)[0] == [10]
        time.sleep(LEAVE_SETTLE_S + 0.5)  # idle, not between two chunks of a map
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        assert proc.wait(30) == EXIT_TERMINATED
        print(f"\nidle engine exited {time.monotonic() - t0:.2f} s after SIGTERM")
    finally:
        proc.kill()
    # it left on the signal itself, without draining
    text = log.read_text()
    assert "received signal 15: pod terminating; exiting with code 143" in text, text[-2000:]
    assert "handed back" not in text


def test_sigterm_between_two_chunks_hands_back_the_next_one(controller, tmp_path):  # noqa: F811
    """The moment between two chunks of a map is not idle: the next chunk may be on its
    way. It is handed back when it arrives, not lost with the engine."""
    _, client, env, _ = controller
    proc = _engine(env, grace=30)
    try:
        client.wait_for_engines(1, timeout=60)
        view = client[0]
        assert view.apply_sync(run_chunk, slow_item, [(1, os.devnull, 0)], True)[0] == [10]
        proc.send_signal(signal.SIGTERM)
        later = view.apply_async(run_chunk, slow_item,
                                 [(x, str(tmp_path / "never"), 0) for x in range(3)], True)
        assert later.get(timeout=30)[0::3] == ([], 0)
        assert not (tmp_path / "never").exists()
        assert proc.wait(30) == EXIT_TERMINATED
    finally:
        proc.kill()
