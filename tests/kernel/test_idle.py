"""Idle engines are scaled to zero and come back for the next map (real kernel, local engines)."""

from __future__ import annotations

from ._kernel import Kernel


def test_idle_fleet_scales_to_zero_and_the_next_map_brings_it_back():
    k = Kernel()
    try:
        k.run("import kubemagic, time\n"
              "s = kubemagic.KubeCluster(n=2, backend='local', idle_timeout=1.5).start()\n"
              "s.push(offset=1000)\n"
              "s.execute('def add(x): return x + offset')\n"
              "assert s.map(abs, [-1], progress=False) == [1]\n")
        out = k.run("deadline = time.monotonic() + 30\n"
                    "while (s.n or s.ready_ids()) and time.monotonic() < deadline:\n"
                    "    time.sleep(0.1); s.process_events()\n"
                    "print(s.n, len(s.ready_ids()), s.status()['notice'])")
        assert out.startswith("0 0 no map for 2 s: engines scaled to zero"), out
        # the next map: the same two engines again, with the push and the code replayed
        out = k.run("r = s.map(lambda x: add(x), range(4), progress=False)\n"
                    "print(r, s.n, len(s.ready_ids()))")
        lines = out.strip().splitlines()
        assert lines[0].startswith("kubemagic: the engines were scaled to zero after 2 s"), out
        assert lines[1] == "[1000, 1001, 1002, 1003] 2 2", out
        # a running map is never idle
        out = k.run("r = s.map(time.sleep, [0.5] * 12, progress=False)\nprint(s.n)")
        assert out.strip() == "2", out
    finally:
        k.shutdown()
