"""An interrupt of the kernel during ``%kubemap stop`` or ``%kubemap start`` (local engines)
leaves no session that says "running" without a client, and nothing behind: the session is
stopped, its processes go, and the next cell starts a new fleet that works.

The interrupt is a real SIGINT to the kernel process, sent by a timer in the kernel so that
it lands while the stop or the start runs (a stop takes ~0.4 s, a start ~1.5 s here).
"""

from __future__ import annotations

import time

import psutil
import pytest

from ._kernel import Kernel
from .test_teardown import processes_of, wait_gone

SETUP = "%load_ext kubemagic\nimport kubemagic, os, signal, threading"
#: a SIGINT to this kernel process, ``{delay}`` seconds from now
INTERRUPT_IN = "threading.Timer({delay}, os.kill, (os.getpid(), signal.SIGINT)).start()\n"


@pytest.fixture
def kernel():
    k = Kernel()
    k.run(SETUP)
    yield k
    k.shutdown()


def the_next_cell_starts_a_new_fleet(kernel: Kernel, old: str | None) -> None:
    out = kernel.run("%kubemap abs [-1, -2] -n 2 --backend local --no-progress --out r\n"
                     "s = kubemagic.current()\nprint(r, s.state, s.cluster_id)")
    result, state, cluster_id = out.rsplit(" ", 2)
    assert result == "[1, 2]" and state == "running" and cluster_id != old, out


def test_an_interrupted_stop_leaves_the_session_stopped(kernel):
    old = kernel.run("%kubemap start -n 2 --backend local\n"
                     "print(kubemagic.current().cluster_id)").split()[-1]
    assert processes_of(old)  # controller and engines run
    err = kernel.run_error(INTERRUPT_IN.format(delay=0.15) + "%kubemap stop")
    assert err["ename"] == "KeyboardInterrupt", err
    assert err["evalue"].startswith("interrupted while stopping: the session is stopped"), err
    # stopped at once, not "running" without a client; the teardown went on to its end
    assert kernel.run("print(kubemagic.current().state)").strip() == "stopped"
    print(f"the old fleet's processes were gone {wait_gone(old, 30):.1f} s later")
    assert "stopped" in kernel.run("%kubemap stop")  # stopping again is harmless
    the_next_cell_starts_a_new_fleet(kernel, old)


def test_an_interrupted_start_leaves_no_session_and_nothing_running(kernel):
    kernel_pid = kernel.pid()
    err = kernel.run_error(INTERRUPT_IN.format(delay=0.5) + "%kubemap start -n 2 --backend local")
    assert err["ename"] == "KeyboardInterrupt", err
    assert err["evalue"].startswith("interrupted while the engines started"), err
    assert kernel.run("print(kubemagic.current())").strip() == "None"
    # no controller or engine of the interrupted start is left
    deadline = time.monotonic() + 30
    while psutil.Process(kernel_pid).children(recursive=True):
        assert time.monotonic() < deadline, psutil.Process(kernel_pid).children(recursive=True)
        time.sleep(0.1)
    the_next_cell_starts_a_new_fleet(kernel, None)
