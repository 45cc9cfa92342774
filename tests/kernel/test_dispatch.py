"""The dispatcher on real local engines: speculation on stragglers, maps side by side."""

from __future__ import annotations

import pytest

import kubemagic


def slow_once(x: int, flag: str) -> int:
    """Item 5 hangs the first time it runs anywhere (an unlucky engine), then is quick."""
    import os
    import time

    if x == 5 and not os.path.exists(flag):
        open(flag, "w").close()
        time.sleep(60)
    time.sleep(0.02)
    return x * x


@pytest.fixture
def session():
    s = kubemagic.KubeCluster(n=2, backend="local", idle_timeout=0).start()
    try:
        yield s
    finally:
        s.stop()


def test_a_copy_of_the_straggling_chunk_wins(session, tmp_path):
    flag = str(tmp_path / "hung")
    handle = session.map_async(slow_once, range(40), [flag] * 40, chunksize=1)
    assert handle.result(timeout=50) == [x * x for x in range(40)]
    p = handle.progress()
    # the hung chunk is copied; so may be the one queued behind it on the same engine
    assert 1 <= p.speculated <= 2 and p.speculation_wins == p.speculated
    # the engine that still runs the hung original takes the next map's work later; the
    # map after it is still correct
    assert session.map(lambda x: -x, range(6), progress=False) == [0, -1, -2, -3, -4, -5]


def test_speculation_off_waits_for_the_original(session, tmp_path):
    flag = str(tmp_path / "hung")
    handle = session.map_async(slow_once, range(40), [flag] * 40, chunksize=1,
                               speculate=False)
    with pytest.raises(TimeoutError):
        handle.result(timeout=5)
    handle.cancel()
    assert handle.progress().speculated == 0


def test_two_maps_run_at_once_on_the_same_engines(session):
    def nap(x):
        import time
        time.sleep(0.05)
        return x

    a = session.map_async(nap, range(40))
    b = session.map_async(lambda x: -x, range(40))
    assert b.result(timeout=60) == [-x for x in range(40)]
    assert a.result(timeout=60) == list(range(40))
    assert session.status()["running_maps"] == 0


def kills_its_engine(x: int) -> int:
    """Item 7 takes its engine down, as an out-of-memory kill does."""
    import os

    if x == 7:
        os._exit(137)
    return x


def test_a_poison_item_is_named_and_the_fleet_is_whole_again(session):
    from kubemagic.errors import SessionError

    with pytest.raises(SessionError, match=r"item 7 \(7\) was running each time its engine"):
        session.map(kills_its_engine, range(20), chunksize=4, progress=False)
    # the dead engines were replaced: the next map runs on a full fleet
    assert session.map(abs, range(-3, 3), progress=False, timeout=60) == [3, 2, 1, 0, 1, 2]
    assert len(session.ready_ids()) == 2
