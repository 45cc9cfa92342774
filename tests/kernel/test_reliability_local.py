"""Local-engine reliability in a real kernel: interrupt, engine loss, use after stop."""

from __future__ import annotations

import time

import pytest

from ._kernel import Kernel

SETUP = """%load_ext kubemagic
import kubemagic, os, signal, time
s = kubemagic.KubeCluster(n=2, backend="local").start()
s.execute("import time")
def slow(x):
    time.sleep(0.05)
    return x * x
"""


@pytest.fixture
def kernel():
    k = Kernel()
    k.run(SETUP)
    yield k
    k.shutdown()


def test_interrupt_cancels_pending_work_keeps_engines(kernel):
    msg_id = kernel.submit("r = s.map(slow, range(2000), progress=False)")
    time.sleep(2.0)
    started = time.monotonic()
    kernel.km.interrupt_kernel()
    _, errors = kernel.collect(msg_id, timeout=60)
    assert errors and errors[0]["ename"] == "KeyboardInterrupt"
    assert time.monotonic() - started < 15  # queued chunks were aborted, not run
    out = kernel.run("print(s.state, len(s.ready_ids()), s.map(slow, range(5), progress=False))")
    assert out.strip() == "running 2 [0, 1, 4, 9, 16]"


def test_engine_killed_mid_map_every_item_exactly_once(kernel):
    out = kernel.run(
        "h = s.map_async(slow, range(300))\n"
        "time.sleep(1.0)\n"
        "victim = s.client[0].apply_sync(os.getpid)\n"
        "os.kill(victim, signal.SIGKILL)\n"
        "r = h.result()\n"
        "p = h.progress()\n"
        "deadline = time.monotonic() + 60\n"
        "while len(s.ready_ids()) < 2 and time.monotonic() < deadline:\n"
        "    time.sleep(0.1)\n"
        "print(r == [x * x for x in range(300)], p.retried_chunks >= 1, len(s.ready_ids()))"
    )
    # every item exactly once, and the killed engine was replaced in its slot
    assert out.strip() == "True True 2", out


def test_a_reply_after_its_engine_was_declared_dead_prints_nothing(kernel):
    """An engine frozen past its heartbeat limit is declared dead, its chunk runs again
    elsewhere, and its own reply comes after all: ipyparallel would print "got stale result"
    and the whole message into the cell."""
    out = kernel.run(
        "victim = s.client[0].apply_sync(os.getpid)\n"
        "h = s.map_async(slow, range(200))\n"
        "time.sleep(0.5)\n"
        "os.kill(victim, signal.SIGSTOP)\n"
        "time.sleep(4)\n"  # past the controller's heartbeat limit (about 2 s)
        "os.kill(victim, signal.SIGCONT)\n"
        "r = h.result()\n"
        "time.sleep(2)\n"  # the frozen engine's reply arrives now, if ever
        "print('results', r == [x * x for x in range(200)], h.progress().retried_chunks >= 1)",
        timeout=120,
    )
    assert "stale result" not in out and "unknown result" not in out, out
    assert out.strip().splitlines()[-1] == "results True True", out


def test_an_engine_dropped_for_missed_heartbeats_while_alive_is_restarted(kernel):
    """A frozen engine misses its heartbeats and the controller drops it for good; thawed,
    its process would idle for ever and the fleet stay one short. It is killed and its slot
    gets a new engine."""
    out = kernel.run(
        "victim = s.client[0].apply_sync(os.getpid)\n"
        "os.kill(victim, signal.SIGSTOP)\n"
        "time.sleep(4)\n"  # past the controller's heartbeat limit (about 2 s)
        "os.kill(victim, signal.SIGCONT)\n"
        "deadline = time.monotonic() + 60\n"
        "while len(s.ready_ids()) < 2 and time.monotonic() < deadline:\n"
        "    time.sleep(0.2)\n"
        "try:\n"
        "    os.kill(victim, 0)\n"
        "    gone = False\n"
        "except ProcessLookupError:\n"
        "    gone = True\n"
        "print(len(s.ready_ids()), gone, s.map(slow, range(4), progress=False))",
        timeout=120,
    )
    assert out.strip().splitlines()[-1] == "2 True [0, 1, 4, 9]", out


@pytest.mark.parametrize("cell,ename,words", [
    ("s.stop(); s.map(slow, [1])", "SessionError", "stopped"),
    ("s.stop(); s.scale(3)", "SessionError", "stopped"),
    ("import threading\ns.push(lock=threading.Lock())", "UsageError", "cannot send"),
    ("s.map(lambda x: (yield x), [1])", "RemoteItemError", "item 0 (1) raised TypeError: the result of this item cannot be sent back"),
    ("import threading\ng = threading.Lock()\ns.map(lambda x, g=g: x, [1])", "UsageError",
     "cannot send"),
    ("s.scale(-1)", "UsageError", "at least 0"),
    ("s.execute('def f(:')", "UsageError", "syntax error"),
    ("kubemagic.KubeCluster(n=0, backend='local')", "UsageError", "at least 1"),
    ("kubemagic.KubeCluster(backend='mars')", "UsageError", "unknown backend"),
    ("kubemagic.KubeCluster(backend='local', memory='1XB')", "UsageError", "--memory"),
])
def test_api_misuse_is_one_clear_error(kernel, cell, ename, words):
    err = kernel.run_error(cell)
    assert err["ename"] == ename, err
    assert words in err["evalue"] and "how to fix" in err["evalue"], err["evalue"]
    assert kernel.run("print('alive')").strip() == "alive"
