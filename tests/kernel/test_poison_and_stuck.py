"""Items that kill their engine, and items that never end, in a real kernel on local engines.

A poison item (a segfault, ``os._exit(3)``) is named with what its engines died of, in
one error (or, with ``--return-exceptions``, as that item's result); an item still running
when ``--timeout`` fires or the kernel is interrupted does not keep its engine: it is
interrupted, or its engine restarted. Either way the next map runs at once on the whole
fleet. Each test prints its timings (``-s`` shows them): they are reported, not asserted.
"""

from __future__ import annotations

import re
import time

import pytest

from ._kernel import Kernel

FUNCTIONS = '''\
import ctypes, os, signal, time

def segfault(x):
    if x == 5:
        ctypes.string_at(0)          # a crash in native code
    return x

def exits(x):
    if x == 5:
        os._exit(3)
    return x

def spins(x):
    if x == 2:
        while True:                  # never ends, but Ctrl-C stops it
            pass
    time.sleep(0.05)
    return x

def deaf(x):
    if x == 2:
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # ignores Ctrl-C
        while True:
            pass
    time.sleep(0.05)
    return x

def who(x):
    time.sleep(0.25)
    return os.getpid()
'''


@pytest.fixture(scope="module")
def kernel():
    k = Kernel()
    k.run("%load_ext kubemagic\nimport kubemagic, time")
    k.run("%kubemap start -n 2 --backend local")
    k.run("%%kubemap abs [1] --no-progress\n" + FUNCTIONS)  # defined here and on the engines
    yield k
    k.shutdown()


def whole_fleet_runs_the_next_map(kernel: Kernel, what: str) -> None:
    """A map started right away finishes, correct, and uses both slots' engines (one may be
    a replacement that joins while it runs); the fleet is whole again afterwards."""
    t0 = time.monotonic()
    out = kernel.run("%kubemap who range(24) --chunksize 1 --no-progress --out pids\n"
                     "print(len(set(pids)), len(pids), len(kubemagic.current().ready_ids()))")
    print(f"{what}: the next map (24 x 0.25 s) took {time.monotonic() - t0:.1f} s")
    assert out.split() == ["2", "24", "2"], out


@pytest.mark.parametrize("func,cause,fix", [
    ("segfault", "the engine process was killed by SIGSEGV (Segmentation fault)",
     "crashes the engine process in native code"),
    ("exits", "the engine process exited with code 3", "ends the engine process"),
])
def test_a_poison_item_is_named_with_its_cause(kernel, func, cause, fix):
    t0 = time.monotonic()
    err = kernel.run_error(f"%kubemap {func} range(8) --no-progress")
    print(f"{func}: the poison item was named after {time.monotonic() - t0:.1f} s")
    assert err["ename"] == "PoisonItemError", err
    text = err["evalue"]
    assert text.startswith("item 5 (5) was running each time its engine died (2 time(s)"), text
    assert cause in text and fix in text and "--retries" not in text, text
    whole_fleet_runs_the_next_map(kernel, func)


@pytest.mark.parametrize("func,cause", [
    ("segfault", "SIGSEGV"),
    ("exits", "exited with code 3"),
])
def test_with_return_exceptions_the_poison_item_is_its_result(kernel, func, cause):
    out = kernel.run(f"%kubemap {func} range(8) --return-exceptions --no-progress --out r\n"
                     "print([x if isinstance(x, int) else type(x).__name__ for x in r])\n"
                     "print(r[5])")
    first, message = out.split("\n", 1)
    assert first == "[0, 1, 2, 3, 4, 'PoisonItemError', 6, 7]", out
    assert message.startswith("item 5 (5) was running each time its engine died"), out
    assert cause in message, out
    whole_fleet_runs_the_next_map(kernel, f"{func} --return-exceptions")


@pytest.mark.parametrize("func,outcome", [
    ("spins", "it was interrupted"),
    ("deaf", "did not stop when interrupted; it was restarted (a new engine takes its slot)"),
])
def test_an_endless_item_under_timeout_frees_its_engine(kernel, func, outcome):
    t0 = time.monotonic()
    err = kernel.run_error(f"%kubemap {func} range(6) --chunksize 1 --timeout 2 --no-progress")
    print(f"{func} --timeout 2: the error came after {time.monotonic() - t0:.1f} s")
    assert err["ename"] == "KubemagicError", err
    text = err["evalue"]
    assert "the map did not finish within 2" in text, text
    # speculation may have copied the straggler to the other engine: then both say so
    assert "was still running item 2 after the timeout" in text and outcome in text, text
    whole_fleet_runs_the_next_map(kernel, f"{func} --timeout")


@pytest.mark.parametrize("func,outcome", [
    ("spins", "it was interrupted"),
    ("deaf", "it was restarted"),
])
def test_an_endless_item_stops_with_an_interrupt_of_the_kernel(kernel, func, outcome):
    msg_id = kernel.submit(f"%kubemap {func} range(6) --chunksize 1 --no-progress")
    time.sleep(3)  # the other items are done; item 2 runs
    t0 = time.monotonic()
    kernel.km.interrupt_kernel()
    _, errors = kernel.collect(msg_id, timeout=60)
    print(f"{func}: the interrupted cell ended {time.monotonic() - t0:.1f} s after the interrupt")
    assert len(errors) == 1 and errors[0]["ename"] == "KeyboardInterrupt", errors
    text = errors[0]["evalue"]
    # item 3 may wait behind item 2 on its engine: 4 or 5 items are done
    assert re.match(r"the map was interrupted after [45] of 6 items; the rest was cancelled",
                    text), text
    assert "was still running item 2 when the map was cancelled" in text, text
    assert outcome in text, text
    whole_fleet_runs_the_next_map(kernel, f"{func} interrupted")


def test_cancel_of_a_background_map_frees_its_stuck_engine(kernel):
    kernel.run("%kubemap deaf range(6) --chunksize 1 --no-speculate --background --out never")
    time.sleep(2)  # item 2 runs, ignoring interrupts
    assert "1 map(s) cancelled" in kernel.run("%kubemap cancel")
    err = kernel.run_error("%kubemap wait never")  # the cancelled map's error, with its notes
    text = err["evalue"]
    assert text.startswith("map cancelled after"), text
    assert ("was still running item 2 when the map was cancelled and did not stop when "
            "interrupted; it was restarted") in text, text
    whole_fleet_runs_the_next_map(kernel, "deaf cancelled")
