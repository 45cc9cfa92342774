"""Local engines forked from the launcher's fork server (kubemagic._forkserver), in real
sessions: they are the fork server's children, and everything the launcher does with a
slot's process (exit status, signals, SIGKILL, output file, --env) still reaches the engine.
The fallbacks (switched off; a fork server that cannot start) start engines as before."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

import kubemagic
from kubemagic.backends import local

from ._kernel import Kernel
from .test_teardown import processes_of, wait_gone


def engine_info() -> dict:
    import os

    return {"pid": os.getpid(), "ppid": os.getppid(), "env": os.environ.get("KM_FORK_TEST")}


def crash(how: str) -> None:
    import ctypes
    import os

    if how == "exit":
        os._exit(3)
    ctypes.string_at(0)


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def session():
    s = kubemagic.KubeCluster(n=2, backend="local", env={"KM_FORK_TEST": "from --env"})
    s.start()
    yield s
    s.stop()


def engines(s) -> dict[int, dict]:
    """Engine id -> what it says of itself, for every ready engine."""
    return {eid: s.client[eid].apply_sync(engine_info) for eid in s.ready_ids()}


def slot_of(s, eid: int):
    info = s.fleet.engines[eid]
    wait_for(lambda: info.index >= 0)  # its first task says which slot it is in
    return s.launcher.launchers[str(info.index)], info


def test_engines_are_forked_and_get_env_values(session):
    server = session.launcher._fork_server
    assert server is not None and server.alive()
    for eid, me in engines(session).items():
        assert me["ppid"] == server.process.pid, me
        assert me["env"] == "from --env"
        el, info = slot_of(session, eid)
        assert info.pid == me["pid"] != el.pid  # the slot's process stands in for it
        assert psutil.Process(el.pid).ppid() == os.getpid()


def test_engine_output_lands_in_its_output_file(session):
    eid = session.ready_ids()[0]
    session.client[eid].apply_sync(lambda: __import__("os").write(1, b"km-fork-marker\n"))
    el, _ = slot_of(session, eid)
    with open(el.output_file) as f:
        text = f.read()
    assert "km-fork-marker" in text and local.REGISTERED_LINE in text


@pytest.mark.parametrize("how,status,cause", [
    ("exit", 3, "exited with code 3"),
    ("segfault", -signal.SIGSEGV, "killed by SIGSEGV"),
])
def test_an_engines_end_reaches_the_launcher(session, how, status, cause):
    eid = session.ready_ids()[0]
    el, info = slot_of(session, eid)
    session.client[eid].apply_async(crash, how)
    wait_for(lambda: session.launcher.engine_death(info) is not None)
    assert session.launcher._exits[el.pid] == status  # what ipyparallel's launcher saw
    assert cause in str(session.launcher.engine_death(info))
    # its slot gets a new engine; the dead one leaves once the controller noticed
    wait_for(lambda: eid not in session.ready_ids() and len(session.ready_ids()) == 2)


def test_sigint_interrupts_a_running_task(session):
    eid = session.ready_ids()[0]
    _, info = slot_of(session, eid)
    ar = session.client[eid].apply_async(time.sleep, 60)
    time.sleep(1.0)
    assert session.launcher.signal_engine(info, signal.SIGINT)
    with pytest.raises(Exception, match="KeyboardInterrupt"):
        ar.get(timeout=30)
    assert session.client[eid].apply_sync(engine_info)["pid"] == info.pid  # still alive


def test_sigkill_of_the_slot_process_kills_its_engine(session):
    eid = session.ready_ids()[0]
    el, info = slot_of(session, eid)
    engine = psutil.Process(info.pid)
    os.kill(el.pid, signal.SIGKILL)
    wait_for(lambda: not engine.is_running())
    wait_for(lambda: len(session.ready_ids()) == 2 and info.pid not in
             {e.pid for e in session.fleet.live()})


def test_switched_off_engines_start_on_their_own():
    s = kubemagic.KubeCluster(n=2, backend="local")
    s.spec.config["ScalableLocalEngineSetLauncher"]["fork_engines"] = False
    with s:
        assert s.launcher._fork_server is None
        assert {me["ppid"] for me in engines(s).values()} == {os.getpid()}


def test_a_fork_server_that_cannot_start_is_no_failure(monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("no room for a socket")

    monkeypatch.setattr(local, "ForkServer", broken)
    with kubemagic.KubeCluster(n=2, backend="local") as s:
        assert s.launcher._fork_server is None
        assert {me["ppid"] for me in engines(s).values()} == {os.getpid()}


def test_a_sigkilled_kernel_leaves_no_fork_server_or_engine():
    k = Kernel()
    try:
        cluster_id = k.run("%load_ext kubemagic\nimport kubemagic\n"
                           "s = kubemagic.KubeCluster(n=2, backend='local').start()\n"
                           "print(s.cluster_id)").split()[-1]
        kinds = [p.cmdline() for p in processes_of(cluster_id)]
        assert sum("kubemagic._forkserver" in c for c in kinds) == 3, kinds  # server + 2
        os.kill(k.pid(), signal.SIGKILL)
        print(f"all gone {wait_gone(cluster_id, 30):.2f} s after SIGKILL")
    finally:
        k.kc.stop_channels()
        k.km.cleanup_resources()
