"""kubemagic._forkserver / kubemagic._forkclient without ipyparallel sessions: a real fork
server forks this very module (its ``__main__`` part below does what the test asks), and
each test watches the slot process the way ipyparallel's launcher does (a Popen)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from kubemagic._forkclient import decode_request, encode_request
from kubemagic._forkserver import ForkServer

REPO = Path(__file__).resolve().parents[2]
MODULE = "tests.unit.test_forkserver"


def test_request_round_trip():
    env = {"A": "1", "EMPTY": "", "EQ": "x=y", "UNI": "é\udcff"}
    argv = [MODULE, "--flag=a b", ""]
    assert decode_request(encode_request("/some/dir", argv, env)) == ("/some/dir", argv, env)


@pytest.fixture(scope="module")
def server():
    s = ForkServer(MODULE, dict(os.environ), str(REPO), os.devnull)
    yield s
    s.stop()
    assert not s.alive() and not os.path.exists(s.dir)


def slot(server: ForkServer, tmp_path: Path, *args: str, **env: str) -> subprocess.Popen:
    """A slot process as ipyparallel starts one: output to a file, a new session."""
    out = open(tmp_path / "out.log", "ab")  # noqa: SIM115 - the child keeps a copy
    with out:
        return subprocess.Popen([*server.client_cmd(), *args], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=tmp_path, env=dict(os.environ, **env),
                                start_new_session=True)


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def engine_of(server: ForkServer, proc: subprocess.Popen) -> psutil.Process:
    wait_for(lambda: server.engine_pid(proc.pid) is not None)
    return psutil.Process(server.engine_pid(proc.pid))


def test_forked_child_gets_argv_env_cwd_and_stdio(server, tmp_path):
    proc = slot(server, tmp_path, "report", "x y", KUBEMAGIC_TEST_VALUE="42")
    assert proc.wait(30) == 0
    out = (tmp_path / "out.log").read_text().splitlines()
    assert out[:3] == [f"argv {[MODULE, 'report', 'x y']!r}", "env 42", f"cwd {tmp_path}"]
    assert out[3] == f"parent {server.process.pid}", "the engine is the fork server's child"


@pytest.mark.parametrize("how,status", [("exit3", 3), ("segfault", -signal.SIGSEGV),
                                        ("sleep", -signal.SIGTERM)])
def test_the_slot_process_ends_as_its_engine_did(server, tmp_path, how, status):
    proc = slot(server, tmp_path, how)
    if how == "sleep":
        engine_of(server, proc)
        proc.send_signal(signal.SIGTERM)  # relayed: the engine dies of it
    assert proc.wait(30) == status


def test_sigint_interrupts_the_engine(server, tmp_path):
    proc = slot(server, tmp_path, "interruptible")
    engine_of(server, proc)
    wait_for(lambda: "waiting" in (tmp_path / "out.log").read_text())
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 7
    assert "KeyboardInterrupt" in (tmp_path / "out.log").read_text()


def test_sigkill_of_the_slot_process_kills_its_engine(server, tmp_path):
    proc = slot(server, tmp_path, "sleep")
    engine = engine_of(server, proc)
    proc.kill()
    assert proc.wait(30) == -signal.SIGKILL
    assert engine.wait(30) is None or not engine.is_running()
    assert server.alive()


def test_a_dead_fork_server_takes_its_engines_along(tmp_path):
    s = ForkServer(MODULE, dict(os.environ), str(REPO), os.devnull)
    try:
        proc = slot(s, tmp_path, "sleep")
        engine = engine_of(s, proc)
        os.kill(s.process.pid, signal.SIGKILL)
        wait_for(lambda: not engine.is_running() or engine.status() == psutil.STATUS_ZOMBIE)
        assert proc.wait(30) == 1
        assert "fork server went away" in (tmp_path / "out.log").read_text()
    finally:
        s.stop()


def test_without_a_fork_server_the_slot_process_becomes_the_engine(tmp_path):
    """The fallback: ``exec`` of ``python -m kubemagic._guard MODULE``, same pid."""
    cmd = [sys.executable, "-I", "-S", str(REPO / "kubemagic" / "_forkclient.py"),
           str(tmp_path / "no-such-socket"), MODULE, "report"]
    out = tmp_path / "out.log"
    with open(out, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    assert proc.wait(60) == 0
    lines = out.read_text().splitlines()
    assert f"parent {os.getpid()}" in lines and lines[0].startswith("argv ")


def _main() -> None:
    """What a forked "engine" of these tests does: ``sys.argv[1]`` says what."""
    how = sys.argv[1]
    if how == "report":
        print(f"argv {[MODULE, *sys.argv[1:]]!r}")
        print(f"env {os.environ.get('KUBEMAGIC_TEST_VALUE')}")
        print(f"cwd {os.getcwd()}")
        print(f"parent {os.getppid()}")
    elif how == "exit3":
        sys.stdout.flush()
        os._exit(3)
    elif how == "segfault":
        import ctypes

        ctypes.string_at(0)
    elif how == "sleep":
        time.sleep(120)
    elif how == "interruptible":
        try:
            print("waiting", flush=True)
            time.sleep(120)
        except KeyboardInterrupt:
            print("KeyboardInterrupt", flush=True)
            sys.exit(7)


if __name__ == "__main__":
    _main()
