"""Resume after a crash: a kernel SIGKILLed mid-map keeps what had arrived; a new kernel
computes only the rest and returns the same results."""

from __future__ import annotations

import os
import signal
import time

from kubemagic.cache import ResultCache

from ._kernel import Kernel

CELL = """
import kubemagic, os, time
calls = {calls!r}
def work(x):
    open(os.path.join(calls, f"{{x}}-{{os.getpid()}}-{{time.monotonic_ns()}}"), "w").close()
    # items from 20 on hang until the file "fast" exists: the first kernel dies first
    time.sleep(0.05 if x < 20 or os.path.exists(calls + ".fast") else 600)
    return x * x
"""


def computed(calls: str) -> list[int]:
    return sorted(int(name.split("-")[0]) for name in os.listdir(calls))


def test_a_killed_kernels_results_are_reused_by_the_next_kernel(tmp_path):
    cache, calls = str(tmp_path / "cache"), str(tmp_path / "calls")
    os.mkdir(calls)
    first = Kernel()
    try:
        first.run("%load_ext kubemagic")
        first.run(CELL.format(calls=calls))
        pid = first.pid()
        first.submit(f"s = kubemagic.current(create=True, n=2, backend='local')\n"
                     f"r = s.map(work, range(30), cache={cache!r}, chunksize=1)")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if os.path.exists(cache) and ResultCache(cache).stats().entries >= 20:
                break
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)  # no atexit, no goodbye: what was stored stays
    finally:
        first.shutdown()
    assert ResultCache(cache).stats().entries == 20

    for name in os.listdir(calls):
        os.remove(os.path.join(calls, name))
    open(calls + ".fast", "w").close()
    second = Kernel()
    try:
        second.run("%load_ext kubemagic")
        second.run(CELL.format(calls=calls))  # the same cell again, in a new kernel
        out = second.run(f"s = kubemagic.current(create=True, n=2, backend='local')\n"
                         f"r = s.map(work, range(30), cache={cache!r}, progress=False)\n"
                         f"print(r == [x * x for x in range(30)])")
    finally:
        second.shutdown()
    assert "20 of 30 items from the cache" in out and out.strip().endswith("True"), out
    assert computed(calls) == list(range(20, 30))
