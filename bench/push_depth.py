"""A 100 MB push through the controller's socket (as to pods), by broadcast-tree depth.

Why: ipyparallel's broadcast scheduler is a tree (depth 1 by default: a root and two
leaves), and every scheduler hop copies the pushed buffers, and with CurveZMQ decrypts and
re-encrypts them. This measures kubemagic's push with the depth it ships (0: one
scheduler) against ipyparallel's default, plain and with CurveZMQ, to 2 and 16 local
engines, alternating the configurations within each repeat.

    python bench/push_depth.py --json results/push_depth.json [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import kubemagic.controller as controller
import scale_bench

PUSH_BYTES = scale_bench.PUSH_BYTES


_MAKE_CLUSTER = controller.make_cluster
_depth = {"value": 0}


def _make_cluster(spec: Any, *args: Any, **kwargs: Any) -> Any:
    """kubemagic's cluster, with the broadcast tree depth under test instead of its own."""
    cluster = _MAKE_CLUSTER(spec, *args, **kwargs)
    flag = "--IPController.broadcast_scheduler_depth="
    cluster.controller_args = [*(a for a in cluster.controller_args if not a.startswith(flag)),
                               f"{flag}{_depth['value']}"]
    return cluster


controller.make_cluster = _make_cluster


def push_seconds(n: int, curve: bool, depth: int, arr: np.ndarray) -> float:
    """Seconds until all ``n`` engines hold ``arr``, checked by its sum on every engine."""
    _depth["value"] = depth
    with scale_bench.session(n, curve=curve) as c:
        c.fleet.same_host = False  # the socket, as to pods
        if scale_bench._curve_on(c) != curve:
            raise RuntimeError(f"CurveZMQ is {'off' if curve else 'on'} against the request")
        t0 = time.perf_counter()
        c.push(bench_array=arr)
        dt = time.perf_counter() - t0
        sums = c.client[:].apply_sync(lambda: float(bench_array.sum()))  # noqa: F821
        if any(abs(s - float(arr.sum())) > 1e-6 for s in sums):
            raise RuntimeError(f"an engine holds a different array (sums {sums})")
        return dt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", required=True)
    args = p.parse_args()
    arr = np.random.default_rng(0).random(PUSH_BYTES // 8)
    samples: dict[str, list[float]] = {}
    for rep in range(args.repeats):
        for n in (2, 16):
            for curve in (False, True):
                for depth in (1, 0) if rep % 2 == 0 else (0, 1):
                    key = f"n{n}_{'curve' if curve else 'plain'}_depth{depth}_s"
                    dt = push_seconds(n, curve, depth, arr)
                    samples.setdefault(key, []).append(round(dt, 3))
                    print(key, round(dt, 3), file=sys.stderr, flush=True)
    medians = {k: statistics.median(v) for k, v in samples.items()}
    out = {"push_depth_s": medians, "samples": samples,
           "mb_s_per_engine": {k: round(PUSH_BYTES / 1e6 / v) for k, v in medians.items()},
           "metadata": {"push_bytes": PUSH_BYTES, "repeats": args.repeats,
                        "statistic": "median over repeats"}}
    Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
