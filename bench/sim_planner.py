"""A discrete-event simulation of kubemagic's dispatcher, to tune ``ChunkPlanner`` without
the noise of a shared 2-core machine.

The model is the dispatcher of ``kubemagic/dispatch.py``: every engine holds up to
``PIPELINE`` chunks, chunks run FIFO per engine, a result comes back ``latency`` seconds
after its chunk ends, and only then does the engine get its next chunk. Each chunk costs
``chunk_overhead`` seconds of engine time on top of its items (the measured ~3 ms of CPU per
chunk over client, controller and engine, half of which lands on the engines' cores), each
item ``per_item_transport`` seconds of latency (pickling, sending). The real ``MapRun`` and
the planner under test are driven exactly as the dispatcher drives them.

    python bench/sim_planner.py          # prints the metrics for the current planner

Measured on the real system the same way (bench/run.py), the simulation's ranking of
planner variants held for the no-op and 100 µs workloads; for CPU-bound and heterogeneous
items the real machine's noise is larger than the differences between sensible variants.
"""

from __future__ import annotations

import heapq
import math
import random
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kubemagic.dispatch import PIPELINE  # noqa: E402
from kubemagic.chunking import ChunkPlanner  # noqa: E402
from kubemagic.mapping import MapRun  # noqa: E402


def simulate(planner_cls: type, durations: list[float], engines: int = 2,
             pipeline: int = PIPELINE, latency: float = 0.001, chunk_overhead: float = 0.0025,
             per_item_transport: float = 2e-6,
             dispatcher_cost: float = 0.0013) -> tuple[float, int]:
    """Makespan (s) and number of chunks of one map of items with these durations.

    ``dispatcher_cost``: seconds of the kernel's one dispatcher thread per chunk (sending
    it, then collecting its result): the serial resource that many engines contend for.
    """
    run = MapRun(total=len(durations), planner=planner_cls(len(durations), "auto"))
    free_at = [0.0] * engines
    inflight = [0] * engines
    events: list[Any] = []
    seq = chunks = 0
    dispatcher = 0.0  # when the dispatcher thread is next free

    def fill(t: float) -> None:
        nonlocal seq, chunks, dispatcher
        for e in range(engines):
            while inflight[e] < pipeline:
                c = run.next_chunk(engines)
                if c is None:
                    return
                chunks += 1
                inflight[e] += 1
                dispatcher = max(dispatcher, t) + dispatcher_cost / 2
                arrive = dispatcher + latency + per_item_transport * len(c)
                work = sum(durations[c.start:c.stop])
                free_at[e] = max(arrive, free_at[e]) + work + chunk_overhead
                seq += 1
                back = free_at[e] + latency + per_item_transport * len(c)
                heapq.heappush(events, (back, seq, e, c, work))

    fill(0.0)
    t = 0.0
    while events:
        t, _, e, c, work = heapq.heappop(events)
        inflight[e] -= 1
        dispatcher = t = max(dispatcher, t) + dispatcher_cost / 2
        run.complete(c, [None] * len(c), work)
        if run.state == "done":
            break
        fill(t)
    return t, chunks


def hetero(seed: int, n: int = 300, median: float = 0.006, sigma: float = 0.8,
           stragglers: int = 5, factor: float = 20) -> list[float]:
    """The benchmark's heterogeneous workload (log-normal items, a few 20x stragglers)."""
    rng = random.Random(seed)
    d = [rng.lognormvariate(math.log(median), sigma) for _ in range(n)]
    for i in rng.sample(range(n), stragglers):
        d[i] = factor * median
    return d


def evaluate(planner_cls: type = ChunkPlanner, seeds: range = range(100),
             **kw: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    d = [0.010] * 200
    m, ch = simulate(planner_cls, d, **kw)
    out["cpu_efficiency"] = sum(d) / (2 * m)
    out["cpu_chunks"] = ch
    ratios = []
    for s in seeds:
        d = hetero(s)
        ratios.append(simulate(planner_cls, d, **kw)[0] / (sum(d) / 2))
    ratios.sort()
    out["hetero_median"] = statistics.median(ratios)
    out["hetero_p90"] = ratios[int(0.9 * len(ratios))]
    for n in (1_000, 10_000, 100_000):
        m, ch = simulate(planner_cls, [1e-6] * n, **kw)
        out[f"noop{n}_items_per_s"] = n / m
        out[f"noop{n}_chunks"] = ch
    return out


if __name__ == "__main__":
    for k, v in evaluate().items():
        print(f"{k:24s} {v:12.3f}")
