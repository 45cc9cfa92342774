"""The ``--scale`` part of the benchmark (issue 12): kubemagic at many engines and at the
machine's ceiling. Opt-in: it takes several minutes on a 2-core machine, and its peaks
(64 engine processes, ~4 GiB; a 10M-item map in a child process, ~2 GiB) are not for CI.

Keys (medians over ``repeats``; ratios taken within one repeat, so machine drift cancels):

* ``scale.local_n64_ready_s`` / ``local_n2_ready_s`` -- ``KubeCluster(n, backend="local")
  .start()`` until it returns (every engine registered and brought up to date);
* ``scale.local_n64_noop_items_per_s`` / ``local_n2_noop_items_per_s`` -- ``map(noop,
  range(1_000_000))`` on that session (median of 3 maps after a warm-up map);
  ``scale.local_n64_over_n2_noop`` their ratio;
* ``scale.local_n64_warm_map_s`` / ``local_n2_warm_map_s`` -- a one-item map, median of 11;
* ``scale.local_n64_idle_cpu_cores`` / ``local_n2_idle_cpu_cores`` -- CPU the idle fleet
  (controller + engines: heartbeats) burns, in cores;
* ``push_fanout_s.n1`` / ``n16`` -- ``session.push(big=<100 MB float64 array>)`` until every
  engine has it; ``.n1_broadcast_view`` / ``.n16_broadcast_view`` the same array through
  ``client.broadcast_view(targets=...).push`` on the same sessions (the A/B);
  ``.n1_zmq_ceiling`` / ``.n16_zmq_ceiling`` raw ZeroMQ (:mod:`fanout_ceiling`);
* ``push_curve.plain_mb_s_per_engine`` / ``curve_mb_s_per_engine`` -- 100 MB
  ``session.push`` to 2 engines without and with CurveZMQ (``IPP_ENABLE_CURVE=1`` while the
  session starts, as the main bench does); ``push_curve.curve_over_plain`` their ratio;
* ``map_memory.n10m_*`` -- the kernel's RSS around ``map(noop, range(10_000_000))`` on 2
  engines, in a child process (:mod:`map_memory`);
* the warm ``%%kubemap`` cell overhead is the main bench's ``kernel`` measurement
  (``warm_cell_overhead_s.kubemap_magic``), run by ``--scale`` too unless ``--no-kernel``.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import fanout_ceiling
from procstat import CpuMeter, engine_cpu_s

HERE = Path(__file__).resolve().parent
NOOP_ITEMS = 1_000_000
MEMORY_ITEMS = 10_000_000
PUSH_BYTES = 100 * 10**6
#: generous: 64 engine processes importing ipyparallel on 2 cores take ~15 s
START_TIMEOUT_S = 600.0
#: keys a --scale run must produce (any failure is also in metadata.errors)
REQUIRED = {
    "scale": ["local_n64_ready_s", "local_n2_ready_s", "local_n64_noop_items_per_s",
              "local_n2_noop_items_per_s", "local_n64_over_n2_noop"],
    "push_fanout_s": ["n1", "n16", "n1_broadcast_view", "n16_broadcast_view"],
    "push_curve": ["plain_mb_s_per_engine", "curve_mb_s_per_engine", "curve_over_plain"],
}


@dataclass(frozen=True)
class Shipped:
    """The functions sent to engines, defined in the caller's ``__main__`` (bench/run.py):
    a notebook ships its functions by value, and an engine could not import this module."""

    noop: Callable[[Any], Any]
    #: ``digest(name) -> (shape, sample sum)`` of a pushed array, on an engine
    digest: Callable[[str], Any]


def _log(msg: str) -> None:
    print(f"[bench scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def session(n: int, curve: bool = False) -> Iterator[Any]:
    """A started local session of ``n`` engines, always stopped (nothing left running)."""
    import kubemagic

    if curve:
        os.environ["IPP_ENABLE_CURVE"] = "1"
    c = kubemagic.KubeCluster(n=n, backend="local", start_timeout=START_TIMEOUT_S)
    try:
        try:
            c.start()
        finally:
            os.environ.pop("IPP_ENABLE_CURVE", None)
        yield c
    finally:
        c.stop()


def timed(f: Callable[[], Any]) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


# -- engines: start, no-op throughput, warm map, idle cost ----------------------------------
def measure_fleet(n: int, info: dict[str, Any], noop: Callable[[Any], Any]) -> dict[str, float]:
    """One session of ``n`` engines: ready time, no-op rate, warm map, idle CPU."""
    import kubemagic

    out: dict[str, float] = {}
    meter = CpuMeter().start()
    t0 = time.perf_counter()
    t0_epoch = time.time()
    c = kubemagic.KubeCluster(n=n, backend="local", start_timeout=START_TIMEOUT_S)
    try:
        c.start()
        out["ready_s"] = time.perf_counter() - t0
        started = {"cpu_s": meter.stop()}
        joins = sorted(e.joined - t0_epoch for e in c.fleet.live())
        costs = engine_cpu_s()
        started.update(first_join_s=round(joins[0], 2), last_join_s=round(joins[-1], 2),
                       engine_start_cpu_mean_s=round(statistics.mean(costs), 3))
        _log(f"n={n}: ready in {out['ready_s']:.2f} s (joins {joins[0]:.2f}..{joins[-1]:.2f} "
             f"s), start CPU {started['cpu_s']}")
        c.map(noop, range(1000), progress=False)  # warm-up: first-map costs out of the way
        meter.start()
        time.sleep(2.0)
        idle = meter.stop()
        out["idle_cpu_cores"] = (idle.get("engines", 0) + idle.get("controller", 0)) / 2.0
        rates, cpu = [], []
        for _ in range(3):
            meter.start()
            dt = timed(lambda: _check(c.map(noop, range(NOOP_ITEMS), progress=False)))
            cpu.append(meter.stop())
            rates.append(NOOP_ITEMS / dt)
        out["noop_items_per_s"] = statistics.median(rates)
        chunks = c.current_map.run._next_id if c.current_map is not None else None
        warm = []
        for i in range(11):
            warm.append(timed(lambda i=i: c.map(noop, [i], progress=False)))
        out["warm_map_s"] = statistics.median(warm)
        _log(f"n={n}: noop {out['noop_items_per_s']:,.0f} items/s ({chunks} chunks), warm "
             f"map {out['warm_map_s'] * 1e3:.1f} ms, idle {out['idle_cpu_cores']:.2f} cores")
        info.setdefault(f"n{n}", []).append({
            "start": started, "noop_rates": [round(r) for r in rates], "noop_chunks": chunks,
            "noop_cpu_s_by_process": cpu, "idle_cpu_s_over_2s": idle})
    finally:
        c.stop()
    return out


def _check(out: list[Any]) -> None:
    assert len(out) == NOOP_ITEMS and out[-1] == NOOP_ITEMS - 1, "wrong noop results"


def run_fleet(bench: Any, repeats: int, noop: Callable[[Any], Any]) -> None:
    info = bench.info.setdefault("scale", {})
    for rep in range(repeats):
        got = {}
        for n in (2, 64) if rep % 2 == 0 else (64, 2):
            try:
                got[n] = measure_fleet(n, info, noop)
            except Exception as e:
                bench.error(f"scale n={n}", e)
                continue
            for k, v in got[n].items():
                bench.add("scale", f"local_n{n}_{k}", v)
        if 2 in got and 64 in got:
            bench.add("scale", "local_n64_over_n2_noop",
                      got[64]["noop_items_per_s"] / got[2]["noop_items_per_s"])


# -- push fan-out, BroadcastView A/B, CurveZMQ ------------------------------------------------
def _verify(c: Any, arr: Any, name: str, digest: Callable[[str], Any]) -> None:
    want = (arr.shape, float(arr[::4096].sum()))
    got = c.client[:].apply_sync(digest, name)
    assert all(g == want for g in got), (name, got, want)


def _broadcast_push(c: Any, arr: Any) -> None:
    view = c.client.broadcast_view(targets=c.ready_ids())
    view.push({"bench_bview": arr}, block=True)


def run_push_fanout(bench: Any, arr: Any, repeats: int, digest: Callable[[str], Any]) -> None:
    """100 MB to 1 and to 16 engines: session.push vs BroadcastView, interleaved."""
    info = bench.info.setdefault("push_fanout", {})
    for n in (1, 16):
        try:
            with session(n) as c:
                for rep in range(repeats):
                    order = ("session", "bview") if rep % 2 == 0 else ("bview", "session")
                    for how in order:
                        meter = CpuMeter().start()
                        if how == "session":
                            dt = timed(lambda: c.push(bench_array=arr))
                            _verify(c, arr, "bench_array", digest)
                            key = f"n{n}"
                        else:
                            dt = timed(lambda: _broadcast_push(c, arr))
                            _verify(c, arr, "bench_bview", digest)
                            key = f"n{n}_broadcast_view"
                        info.setdefault(key, []).append({"s": round(dt, 3),
                                                         "cpu_s": meter.stop()})
                        bench.add("push_fanout_s", key, dt)
                        _log(f"push {key}: {dt:.2f} s")
        except Exception as e:
            bench.error(f"push fan-out n={n}", e)
    for n in (1, 16):
        try:
            for dt in fanout_ceiling.fanout_seconds(n, PUSH_BYTES, repeats):
                bench.add("push_fanout_s", f"n{n}_zmq_ceiling", dt)
            _log(f"zmq ceiling n={n}: {bench.samples['push_fanout_s'][f'n{n}_zmq_ceiling']}")
        except Exception as e:
            bench.error(f"zmq ceiling n={n}", e)


def _curve_on(c: Any) -> bool:
    """CurveZMQ is really on: the engine connection file carries the server key."""
    sec = Path(c.controller.profile_dir) / "security"
    return any(json.loads(f.read_text()).get("curve_serverkey")
               for f in sec.glob("*engine.json"))


def run_curve(bench: Any, arr: Any, repeats: int, digest: Callable[[str], Any]) -> None:
    """100 MB to 2 engines, plain and with CurveZMQ, alternating sessions."""
    info = bench.info.setdefault("push_fanout", {})
    for rep in range(repeats):
        rates = {}
        for curve in (False, True) if rep % 2 == 0 else (True, False):
            key = "curve" if curve else "plain"
            try:
                with session(2, curve=curve) as c:
                    c.fleet.same_host = False  # the socket, as to pods: Curve is about the wire
                    if _curve_on(c) != curve:
                        raise RuntimeError(f"CurveZMQ is {'off' if curve else 'on'} in the "
                                           f"{key} session")
                    meter = CpuMeter().start()
                    dt = timed(lambda: c.push(bench_array=arr))
                    info.setdefault(f"n2_{key}", []).append({"s": round(dt, 3),
                                                             "cpu_s": meter.stop()})
                    _verify(c, arr, "bench_array", digest)
            except Exception as e:
                bench.error(f"push {key}", e)
                continue
            rates[key] = PUSH_BYTES / 1e6 / dt
            bench.add("push_curve", f"{key}_mb_s_per_engine", rates[key])
            _log(f"push {key}: {rates[key]:.0f} MB/s per engine")
        if len(rates) == 2:
            bench.add("push_curve", "curve_over_plain", rates["curve"] / rates["plain"])


# -- the 10M-item map's memory -----------------------------------------------------------------
def run_map_memory(bench: Any, items: int) -> None:
    """In a child process (``ru_maxrss`` is per process and cannot be reset)."""
    key = f"n{items // 1_000_000}m" if items >= 1_000_000 else f"n{items}"
    try:
        proc = subprocess.run(
            [sys.executable, str(HERE / "map_memory.py"), "--items", str(items)],
            capture_output=True, text=True, timeout=1800, cwd=HERE)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr else
                               f"exit {proc.returncode}")
        data = json.loads(proc.stdout.strip().splitlines()[-1])
    except Exception as e:
        bench.error("map memory", e)
        return
    bench.info.setdefault("map_memory", {})[key] = data
    for field in ("baseline_rss_mib", "peak_rss_mib", "after_rss_mib", "retained_rss_mib",
                  "items_per_s"):
        bench.add("map_memory", f"{key}_{field}", data[field])
    _log(f"map of {items:,}: {data}")


# -- entry point and table -----------------------------------------------------------------------
def run(bench: Any, shipped: Shipped, quick: bool = False) -> None:
    """Every scale measurement; ``quick`` keeps one repeat each and a 1M-item memory map."""
    import numpy as np

    repeats = 1 if quick else 2
    bench.info["scale_note"] = __doc__.split("\n\n")[1]
    run_fleet(bench, repeats, shipped.noop)
    arr = np.random.default_rng(0).random(PUSH_BYTES // 8)
    run_push_fanout(bench, arr, 2 if quick else 3, shipped.digest)
    run_curve(bench, arr, 2 if quick else 3, shipped.digest)
    del arr
    run_map_memory(bench, 1_000_000 if quick else MEMORY_ITEMS)


def _v(r: dict[str, Any], metric: str, key: str) -> float | None:
    return (r.get(metric) or {}).get(key)


def markdown(r: dict[str, Any]) -> str:
    """The scale section of the table: value, target, whether it holds."""
    if not any(r.get(m) for m in ("scale", "push_fanout_s", "push_curve", "map_memory")):
        return ""
    rows = []

    def row(label: str, value: float | None, fmt: str, target: str = "",
            ok: Callable[[float], bool] | None = None) -> None:
        text = "–" if value is None else fmt.format(value)
        holds = "" if ok is None else ("–" if value is None else
                                       "yes" if ok(value) else "**no**")
        rows.append(f"| {label} | {text} | {target} | {holds} |")

    s = lambda k: _v(r, "scale", k)  # noqa: E731
    p = lambda k: _v(r, "push_fanout_s", k)  # noqa: E731
    row("64 local engines: start → all ready", s("local_n64_ready_s"), "{:.2f} s",
        "≤ 10 s", lambda v: v <= 10)
    row("2 local engines: start → all ready", s("local_n2_ready_s"), "{:.2f} s")
    row("no-op map of 1M items, 64 engines", s("local_n64_noop_items_per_s"), "{:,.0f}/s")
    row("no-op map of 1M items, 2 engines", s("local_n2_noop_items_per_s"), "{:,.0f}/s")
    row("no-op rate 64 / 2 engines (same repeat)", s("local_n64_over_n2_noop"), "{:.0%}",
        "≥ 50%", lambda v: v >= 0.5)
    row("warm 1-item map, 64 engines", s("local_n64_warm_map_s"), "{:.3f} s")
    row("warm 1-item map, 2 engines", s("local_n2_warm_map_s"), "{:.3f} s")
    row("idle fleet CPU, 64 engines (heartbeats)", s("local_n64_idle_cpu_cores"),
        "{:.2f} cores")
    row("idle fleet CPU, 2 engines", s("local_n2_idle_cpu_cores"), "{:.2f} cores")
    for n in (1, 16):
        row(f"push 100 MB to {n}: session.push", p(f"n{n}"), "{:.2f} s")
        row(f"push 100 MB to {n}: BroadcastView", p(f"n{n}_broadcast_view"), "{:.2f} s")
        row(f"push 100 MB to {n}: raw ZeroMQ ceiling", p(f"n{n}_zmq_ceiling"), "{:.2f} s")
    for how, suffix in (("session.push", ""), ("BroadcastView", "_broadcast_view"),
                        ("raw ZeroMQ ceiling", "_zmq_ceiling")):
        a, b = p("n16" + suffix), p("n1" + suffix)
        row(f"push fan-out n16 / n1, {how}", a / b if a and b else None, "{:.1f}×",
            *(("≤ 3×", lambda v: v <= 3) if not suffix else ()))
    c = lambda k: _v(r, "push_curve", k)  # noqa: E731
    row("push 100 MB to 2, plain, MB/s per engine", c("plain_mb_s_per_engine"), "{:.0f}")
    row("push 100 MB to 2, CurveZMQ, MB/s per engine", c("curve_mb_s_per_engine"), "{:.0f}")
    row("CurveZMQ / plain push throughput", c("curve_over_plain"), "{:.0%}", "≥ 50%",
        lambda v: v >= 0.5)
    m = lambda k: _v(r, "map_memory", k)  # noqa: E731
    key = next((k.rsplit("_peak_rss_mib", 1)[0] for k in (r.get("map_memory") or {})
                if k.endswith("_peak_rss_mib")), "n10m")
    row(f"kernel RSS peak, no-op map ({key[1:]} items)", m(f"{key}_peak_rss_mib"),
        "{:,.0f} MiB", "< 1 GiB", lambda v: v < 1024)
    row("… RSS before the map", m(f"{key}_baseline_rss_mib"), "{:,.0f} MiB")
    row("… RSS kept after the result is deleted", m(f"{key}_retained_rss_mib"),
        "{:,.0f} MiB")
    row("warm `%%kubemap` cell overhead", _v(r, "warm_cell_overhead_s", "kubemap_magic"),
        "{:.3f} s", "≤ 50 ms", lambda v: v <= 0.05)
    return "\n".join(["", "Scale and ceilings (issue 12; `--scale`):", "",
                      "| metric | value | target | holds |", "|---|---|---|---|", *rows]) + "\n"
