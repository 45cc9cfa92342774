"""A 100 MB push through the controller's socket (as to pods), by controller configuration.

Why: ipyparallel's broadcast scheduler is a tree (depth 1 by default: a root and two
leaves), and every scheduler hop copies the pushed buffers, and with CurveZMQ decrypts and
re-encrypts them; and its controller has libzmq's one I/O thread, which encrypts the
engines' copies one after the other. This measures kubemagic's push with its own
controller settings (depth 0: one scheduler; an I/O thread per core, up to 4) against
ipyparallel's (depth 1, one I/O thread) and depth 0 alone, plain and with CurveZMQ, to 2
and 16 local engines, alternating the configurations within each repeat.

    python bench/push_controller.py --json results/push_controller.json [--repeats 3]
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
from kubemagic._guard import IO_THREADS_ENV
import scale_bench

PUSH_BYTES = scale_bench.PUSH_BYTES


_MAKE_CLUSTER = controller.make_cluster
#: name -> (broadcast tree depth, controller I/O threads or None for kubemagic's own)
CONFIGS = {"depth1_io1": (1, 1), "depth0_io1": (0, 1), "kubemagic": (0, None)}
_config = {"value": CONFIGS["kubemagic"]}


def _make_cluster(spec: Any, *args: Any, **kwargs: Any) -> Any:
    """kubemagic's cluster, with the controller configuration under test instead of its own."""
    cluster = _MAKE_CLUSTER(spec, *args, **kwargs)
    depth, io_threads = _config["value"]
    flag = "--IPController.broadcast_scheduler_depth="
    cluster.controller_args = [*(a for a in cluster.controller_args if not a.startswith(flag)),
                               f"{flag}{depth}"]
    if io_threads is not None:
        cluster.config.LocalControllerLauncher.environment[IO_THREADS_ENV] = str(io_threads)
    return cluster


controller.make_cluster = _make_cluster


def push_seconds(n: int, curve: bool, config: str, arr: np.ndarray) -> float:
    """Seconds until all ``n`` engines hold ``arr``, checked by its sum on every engine."""
    _config["value"] = CONFIGS[config]
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
                for config in list(CONFIGS)[::1 if rep % 2 == 0 else -1]:
                    key = f"n{n}_{'curve' if curve else 'plain'}_{config}_s"
                    dt = push_seconds(n, curve, config, arr)
                    samples.setdefault(key, []).append(round(dt, 3))
                    print(key, round(dt, 3), file=sys.stderr, flush=True)
    medians = {k: statistics.median(v) for k, v in samples.items()}
    out = {"push_s": medians, "samples": samples,
           "mb_s_per_engine": {k: round(PUSH_BYTES / 1e6 / v) for k, v in medians.items()},
           "metadata": {"push_bytes": PUSH_BYTES, "repeats": args.repeats,
                        "statistic": "median over repeats",
                        "kubemagic_io_threads": controller.io_threads(),
                        "configs": {k: {"broadcast_scheduler_depth": d, "io_threads": t}
                                    for k, (d, t) in CONFIGS.items()}}}
    Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
