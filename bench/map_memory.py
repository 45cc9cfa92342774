"""The kernel's memory for one big no-op map, measured in a process of its own.

``ru_maxrss`` cannot be reset, so the measurement needs a fresh process: it starts a local
session, maps ``noop`` over ``range(items)`` exactly as a notebook would, and prints one
JSON object with the resident memory (MiB) at each phase:

* ``baseline_rss_mib`` -- session running, before the map;
* ``peak_rss_mib`` -- the highest RSS during the map (``ru_maxrss`` and a 20 ms sampler);
* ``after_rss_mib`` -- the map returned, its result list still referenced;
* ``retained_rss_mib`` -- the result deleted and collected: what the session keeps.

With ``--tracemalloc`` (use a smaller ``--items``: tracing slows allocation severalfold)
it adds the largest allocation sites alive when the map returns, and after the result is
dropped: which structure holds the memory.

    python bench/map_memory.py --items 10000000 [--engines 2] [--tracemalloc]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import tempfile
import time
from typing import Any

from procstat import RssSampler, rss_mib


def noop(x):
    return x


def _top(snapshot: Any, limit: int = 8) -> list[dict[str, Any]]:
    """The allocation sites holding the most memory, kubemagic's and the caller's first."""
    stats = snapshot.statistics("lineno")
    return [{"site": f"{s.traceback[0].filename.rsplit('/', 2)[-2:]}:{s.traceback[0].lineno}",
             "mib": round(s.size / 2**20, 1), "blocks": s.count} for s in stats[:limit]]


def measure(items: int, engines: int, trace: bool) -> dict[str, Any]:
    import kubemagic

    out: dict[str, Any] = {"items": items, "engines": engines,
                           "kubemagic": os.path.dirname(kubemagic.__file__)}
    c = kubemagic.KubeCluster(n=engines, backend="local", start_timeout=600)
    try:
        c.start()
        c.map(noop, range(10), progress=False)  # first-map costs out of the way
        gc.collect()
        out["baseline_rss_mib"] = round(rss_mib(), 1)
        if trace:
            import tracemalloc

            tracemalloc.start()
        with RssSampler() as sampler:
            t = time.perf_counter()
            result = c.map(noop, range(items), progress=False)
            out["map_s"] = round(time.perf_counter() - t, 2)
        assert len(result) == items and result[-1] == items - 1
        out["items_per_s"] = round(items / out["map_s"])
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out["peak_rss_mib"] = round(max(sampler.peak, maxrss), 1)
        out["after_rss_mib"] = round(rss_mib(), 1)
        if trace:
            out["top_sites_after_map"] = _top(tracemalloc.take_snapshot())
            out["traced_peak_mib"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
        del result
        gc.collect()
        out["retained_rss_mib"] = round(rss_mib(), 1)
        if trace:
            out["top_sites_retained"] = _top(tracemalloc.take_snapshot())
            tracemalloc.stop()
    finally:
        c.stop()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=10_000_000)
    p.add_argument("--engines", type=int, default=2)
    p.add_argument("--tracemalloc", action="store_true")
    args = p.parse_args()
    os.environ.setdefault("IPYTHONDIR", tempfile.mkdtemp(prefix="kubemagic-bench-ipython-"))
    print(json.dumps(measure(args.items, args.engines, args.tracemalloc)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
