"""--adapt on real local engines: the fleet grows with the work and shrinks when idle."""

from __future__ import annotations

import time

import pytest

import kubemagic
from kubemagic.errors import UsageError


def nap(x: int) -> int:
    import time

    time.sleep(0.05)
    return x


def wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_the_fleet_follows_the_work_and_a_manual_scale_ends_it():
    s = kubemagic.KubeCluster(n=1, backend="local", idle_timeout=0).start()
    try:
        s.adapt(0, 3)
        peak = 0
        handle = s.map_async(nap, range(200))
        while not handle.done():
            peak = max(peak, len(s.ready_ids()))
            time.sleep(0.05)
        assert handle.result() == list(range(200))
        assert peak == 3  # grew to the maximum while 200 items waited
        assert wait_for(lambda: s.n == 0 and not s.ready_ids(), 60)  # back to the minimum
        assert s.map(nap, range(4), progress=False) == [0, 1, 2, 3]  # from 0 engines
        s.scale(2)
        assert not s.scaler.adaptive and s.n == 2
    finally:
        s.stop()


def test_bad_bounds_are_one_clear_error():
    s = kubemagic.KubeCluster(n=1, backend="local", idle_timeout=0).start()
    try:
        with pytest.raises(UsageError, match="minimum is above the maximum"):
            s.adapt(4, 2)
        with pytest.raises(UsageError, match="adaptive maximum must be at least 1"):
            s.adapt(0, 0)
    finally:
        s.stop()
