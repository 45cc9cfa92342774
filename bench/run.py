#!/usr/bin/env python
"""kubemagic performance benchmark, side by side with the baselines, in one run.

    python bench/run.py [--quick] [--cluster] [--scale] [--repeats R] [--json OUT] [--md OUT]

Every workload runs, in the same process and the same run, on

* ``kubemap``          -- ``kubemagic.KubeCluster(n=2, backend="local")`` with its defaults
                          (``map(..., chunksize="auto")``, the only non-default is
                          ``progress=False`` so no text bar is drawn);
* ``ipp_default``      -- plain ``ipp.Cluster(n=2)``, ``rc.load_balanced_view().map_sync``;
* ``dask``             -- ``Client(LocalCluster(n_workers=2, threads_per_worker=1,
                          processes=True))``, ``client.map`` + ``client.gather``;
* ``processpool_cs1``  -- ``concurrent.futures.ProcessPoolExecutor(2).map(chunksize=1)``;
* ``processpool_auto`` -- the same with ``chunksize = ceil(N / (4 * workers))``.

Repeats are interleaved (repeat 1 of every system, then repeat 2, ... with the order of the
systems rotated) so that drift in the machine's load hits every system alike; the JSON holds
medians, the raw samples are under ``samples``. Nothing here asserts timings: the numbers
are compared with the targets of issue 6 in the printed table only.

``--scale`` (opt-in: minutes and ~4 GiB) adds issue 12's measurements at many engines and at
the machine's ceiling (:mod:`scale_bench`); ``--only scale`` runs them alone. To measure a
commit while the work tree is being edited, put an export of it first on ``PYTHONPATH``
(``metadata.kubemagic_imported_from`` says which kubemagic was measured).

Workload functions are defined in ``__main__`` on purpose: that is how a notebook ships
them (by value: ipyparallel's canning, cloudpickle for dask; the fork start method lets the
process pool find them by reference).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import json
import logging
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import scale_bench
from procstat import descendants

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
ENGINES = 2
MB = 1e6  # MB/s means 10**6 bytes per second

# a clean IPython dir: ipp.Cluster's default profile must not pick up a user's config
_IPYTHONDIR = tempfile.mkdtemp(prefix="kubemagic-bench-ipython-")
os.environ["IPYTHONDIR"] = _IPYTHONDIR
atexit.register(shutil.rmtree, _IPYTHONDIR, True)
os.environ.pop("IPP_ENABLE_CURVE", None)


# -- workload functions (shipped by value, like a notebook's) -----------------------------------
def noop(x):
    return x


def spin(n, i):
    """A pure-Python busy loop of ``n`` iterations (CPU work, not sleep); returns ``i``.

    A fixed amount of work rather than "spin until t": if a process is descheduled the
    item really takes longer, so contention shows in the numbers instead of hiding.
    ``i`` makes every item distinct (dask's pure=True would merge identical tasks).
    """
    x = 0
    for _ in range(n):
        x += 1
    return i


def array_digest(name):
    """On an engine: shape and sum of a pushed array (checks the push really landed)."""
    a = globals()[name]
    return a.shape, float(a[::4096].sum())


# -- small helpers -------------------------------------------------------------------------------
def median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def now() -> float:
    return time.perf_counter()


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def calibrate_spin(seconds: float) -> int:
    """Iterations of :func:`spin` that take ``seconds`` of CPU here.

    Timed with the thread's CPU clock, not the wall clock: on a shared machine a wall-clock
    calibration taken while other processes run makes every item several times shorter
    than nominal (seen: 0.77 s instead of 2 s of work)."""
    n = 1_000_000
    spin(n, 0)  # warm up the specialising interpreter
    best = min(_cpu_timed(spin, n, 0) for _ in range(5))
    return max(1000, int(n * seconds / best))


def _cpu_timed(f: Callable[..., Any], *a: Any) -> float:
    t = time.thread_time()
    f(*a)
    return time.thread_time() - t


# -- workloads -----------------------------------------------------------------------------------
class Workloads:
    """The inputs, fixed once per run (same items for every system)."""

    def __init__(self, quick: bool, seed: int = 6) -> None:
        self.quick = quick
        self.noop_n = 10_000 if quick else 100_000
        # one task/future per item costs milliseconds each: a smaller N keeps the run short;
        # these systems report items/s over their own N (see metadata)
        self.noop_n_per_item_task = 500 if quick else 2_000
        self.noop_n_processpool_cs1 = 10_000 if quick else 20_000
        self.cpu_items = 200
        self.cpu_item_s = 0.010
        self.spin_per_s = calibrate_spin(1.0)
        self.cpu_args = [(int(self.spin_per_s * self.cpu_item_s), i) for i in range(self.cpu_items)]
        # heterogeneous: log-normal durations (median 6 ms, sigma 0.8) and a few 20x stragglers
        rng = random.Random(seed)
        self.het_items = 300
        self.het_median_s = 0.006
        self.het_sigma = 0.8
        self.het_straggler_factor = 20
        durations = [rng.lognormvariate(math.log(self.het_median_s), self.het_sigma)
                     for _ in range(self.het_items)]
        self.het_stragglers = sorted(rng.sample(range(self.het_items), 5))
        for i in self.het_stragglers:
            durations[i] = self.het_straggler_factor * self.het_median_s
        self.het_nominal_total_s = sum(durations)
        self.het_args = [(int(self.spin_per_s * d), i) for i, d in enumerate(durations)]
        self.push_bytes = 100 * 10**6
        self._array = None

    @property
    def array(self):
        if self._array is None:
            import numpy as np

            self._array = np.random.default_rng(0).random(self.push_bytes // 8)
        return self._array

    def serial_seconds(self, args: list[tuple[int, int]], passes: int = 2) -> float:
        """Serial time of the workload in this process: the CPU time (thread clock) of
        running every item, the fastest of ``passes`` passes. On a shared machine this is
        the uncontended work, so other processes' noise cannot make efficiency look better
        (it makes the parallel runs slower, which is real)."""
        best = math.inf
        for _ in range(passes):
            t = time.thread_time()
            for a in args:
                spin(*a)
            best = min(best, time.thread_time() - t)
        return best

    def metadata(self) -> dict[str, Any]:
        return {
            "noop_n": self.noop_n,
            "noop_n_ipp_default_and_dask": self.noop_n_per_item_task,
            "noop_n_processpool_cs1": self.noop_n_processpool_cs1,
            "noop_note": (
                "items/s; kubemap and processpool_auto map noop over noop_n items; ipp_default "
                "(one task per item) and dask (one future per item) over "
                "noop_n_ipp_default_and_dask items, processpool_cs1 over noop_n_processpool_cs1, "
                "to keep the run short -- a rate, so comparable"),
            "cpu_items": self.cpu_items,
            "cpu_item_nominal_s": self.cpu_item_s,
            "cpu_note": "efficiency = serial time / (2 workers x wall); serial time = CPU "
                        "time (thread clock) of running all items in this process, fastest "
                        "of 2-3 passes, measured in the same repeat (the uncontended work)",
            "hetero_items": self.het_items,
            "hetero_lognormal_median_s": self.het_median_s,
            "hetero_lognormal_sigma": self.het_sigma,
            "hetero_stragglers": self.het_stragglers,
            "hetero_straggler_factor": self.het_straggler_factor,
            "hetero_nominal_total_s": round(self.het_nominal_total_s, 3),
            "hetero_note": "makespan / (serial time of all items in this process / 2)",
            "spin_iterations_per_s": self.spin_per_s,
            "push_bytes": self.push_bytes,
            "push_note": "one float64 array of push_bytes broadcast to both workers; "
                         "MB/s per engine = push_bytes / 1e6 / seconds until every engine "
                         "has it (the engines receive in parallel); kubemap's local "
                         "backend writes it once to a shared-memory file the engines map, "
                         "kubemap_socket and kubemap_curve send it through the controller "
                         "as to Kubernetes engines",
        }


# -- the systems ---------------------------------------------------------------------------------
class System:
    name = ""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def map(self, func: Callable[..., Any], args: list[tuple[Any, ...]]) -> list[Any]:
        raise NotImplementedError

    def push(self, array: Any) -> None:
        raise NotImplementedError

    def verify_push(self, array: Any) -> None: ...


class Kubemap(System):
    name = "kubemap"

    def __init__(self, curve: bool = False, socket: bool = False) -> None:
        self.curve = curve
        #: push through the controller's socket, as to Kubernetes engines, instead of the
        #: local backend's shared-memory file: CurveZMQ is compared on that path
        self.socket = socket or curve
        self.c = None
        if curve:
            self.name = "kubemap_curve"
        elif socket:
            self.name = "kubemap_socket"

    def start(self) -> None:
        import kubemagic

        if self.curve:
            os.environ["IPP_ENABLE_CURVE"] = "1"
        try:
            self.c = kubemagic.KubeCluster(n=ENGINES, backend="local")
            self.c.start()
        finally:
            os.environ.pop("IPP_ENABLE_CURVE", None)
        if self.socket:
            self.c.fleet.same_host = False

    def curve_status(self) -> dict[str, Any]:
        """Is CurveZMQ really on? The engine connection file carries the server key then."""
        sec = Path(self.c.controller.profile_dir) / "security"
        files = sorted(sec.glob("*engine.json"))
        info: dict[str, Any] = {"connection_files": [f.name for f in files]}
        on = False
        for f in files:
            d = json.loads(f.read_text())
            on = on or bool(d.get("curve_serverkey"))
        info["curve_serverkey_in_connection_file"] = on
        logs = self.c.logs(tail=10_000)
        info["engine_log_says_not_using_curve"] = "Not using CurveZMQ" in logs
        info["engine_log_says_using_curve"] = "Using CurveZMQ security" in logs
        return info

    def stop(self) -> None:
        if self.c is not None:
            self.c.stop()
            self.c = None

    def map(self, func, args):
        return self.c.map(func, *zip(*args), progress=False)

    def push(self, array):
        self.c.push({"bench_array": array})

    def verify_push(self, array):
        got = self.c.client[:].apply_sync(array_digest, "bench_array")
        want = (array.shape, float(array[::4096].sum()))
        assert all(g == want for g in got), (got, want)


class IppDefault(System):
    name = "ipp_default"

    def __init__(self, curve: bool = False) -> None:
        self.curve = curve
        self.cluster = self.rc = None
        if curve:
            self.name = "ipp_default_curve"

    def start(self) -> None:
        import ipyparallel as ipp

        if self.curve:
            os.environ["IPP_ENABLE_CURVE"] = "1"
        try:
            self.cluster = ipp.Cluster(n=ENGINES, log_level=logging.ERROR)
            self.rc = self.cluster.start_and_connect_sync()
            self.rc.wait_for_engines(ENGINES, timeout=120)
        finally:
            os.environ.pop("IPP_ENABLE_CURVE", None)
        self.lview = self.rc.load_balanced_view()
        self.dview = self.rc[:]

    def stop(self) -> None:
        if self.rc is not None:
            with contextlib.suppress(Exception):
                self.rc.close()
        if self.cluster is not None:
            self.cluster.stop_cluster_sync()
        self.cluster = self.rc = None

    def map(self, func, args):
        return self.lview.map_sync(func, *zip(*args))

    def push(self, array):
        self.dview.push({"bench_array": array}, block=True)

    def verify_push(self, array):
        got = self.dview.apply_sync(array_digest, "bench_array")
        want = (array.shape, float(array[::4096].sum()))
        assert all(g == want for g in got), (got, want)


class Dask(System):
    name = "dask"

    def __init__(self) -> None:
        self.client = self.cluster = None
        self._scattered = None

    def start(self) -> None:
        from dask.distributed import Client, LocalCluster

        self.cluster = LocalCluster(n_workers=ENGINES, threads_per_worker=1, processes=True,
                                    silence_logs=logging.ERROR)
        self.client = Client(self.cluster)
        self.client.wait_for_workers(ENGINES)

    def stop(self) -> None:
        self._scattered = None
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self.client = self.cluster = None

    def map(self, func, args):
        futures = self.client.map(func, *zip(*args))
        out = self.client.gather(futures)
        del futures
        return out

    def push(self, array):
        self._scattered = None  # release the previous copy first
        self._scattered = self.client.scatter(array, broadcast=True)

    def verify_push(self, array):
        # the scheduler learns of each replica when that worker reports it: under load one
        # report can arrive after scatter() returned, so allow it a moment
        deadline = time.monotonic() + 10
        while True:
            who = self.client.who_has([self._scattered])
            holders = next(iter(who.values()))
            if len(holders) == ENGINES or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(holders) == ENGINES, who


class ProcessPool(System):
    def __init__(self, chunksize: str | int) -> None:
        self.chunksize = chunksize
        self.name = "processpool_cs1" if chunksize == 1 else "processpool_auto"
        self.pool = None

    def start(self) -> None:
        import concurrent.futures
        import multiprocessing

        self.pool = concurrent.futures.ProcessPoolExecutor(
            ENGINES, mp_context=multiprocessing.get_context("fork"))
        # spawn the workers before timing anything (a pool starts them lazily)
        list(self.pool.map(noop, range(4 * ENGINES), chunksize=1))

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None

    def map(self, func, args):
        cs = self.chunksize
        if cs == "auto":
            cs = max(1, math.ceil(len(args) / (4 * ENGINES)))
        return list(self.pool.map(func, *zip(*args), chunksize=cs))


# -- measurements --------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick = args.quick
        self.repeats = args.repeats or (1 if args.quick else 5)
        self.w = Workloads(args.quick)
        self.samples: dict[str, dict[str, list[float]]] = {}
        self.info: dict[str, Any] = {"errors": [], "processes": {}, "curve": {}}

    def add(self, metric: str, key: str, value: float | None) -> None:
        self.samples.setdefault(metric, {}).setdefault(key, []).append(value)

    def error(self, where: str, exc: BaseException) -> None:
        text = f"{where}: {type(exc).__name__}: {exc}"
        log("ERROR " + text)
        first = text.splitlines()[0] if text else text
        text = first if len(first) <= 300 else first[:297] + "..."
        self.info["errors"].append(text)
        traceback.print_exc(file=sys.stderr)

    # one repeat of one system: start, every workload, stop
    def run_system(self, system: System, *, workloads: bool = True, push: bool = True,
                   start_key: str | None = None) -> None:
        w, name = self.w, system.name
        t = now()
        try:
            system.start()
        except Exception as e:
            self.error(f"{name} start", e)
            with contextlib.suppress(Exception):
                system.stop()
            return
        if start_key:
            self.add("start_s", start_key, now() - t)
            self.info["processes"][name] = len(descendants(os.getpid()))
        try:
            if workloads:
                self._noop(system)
                self._cpu(system)
                self._hetero(system)
                self._warm(system)
            if push:
                self._push(system)
            if isinstance(system, Kubemap) and system.curve:
                self.info["curve"][name] = system.curve_status()
        except Exception as e:
            self.error(f"{name} workload", e)
        finally:
            try:
                system.stop()
            except Exception as e:
                self.error(f"{name} stop", e)
            gc.collect()

    def _noop(self, s: System) -> None:
        w = self.w
        if s.name in ("ipp_default", "dask"):
            n = w.noop_n_per_item_task
        elif s.name == "processpool_cs1":
            n = w.noop_n_processpool_cs1
        else:
            n = w.noop_n
        args = [(i,) for i in range(n)]
        t = now()
        out = s.map(noop, args)
        dt = now() - t
        assert out == list(range(n)), f"{s.name}: wrong noop results"
        self.add("noop_items_per_s", s.name, n / dt)
        log(f"{s.name:17s} noop      {n / dt:12,.0f} items/s  (N={n}, {dt:.2f} s)")

    def _cpu(self, s: System) -> None:
        w = self.w
        t = now()
        out = s.map(spin, w.cpu_args)
        dt = now() - t
        assert out == list(range(w.cpu_items))
        serial = self._serial("cpu")
        self.add("cpu_efficiency", s.name, serial / (ENGINES * dt))
        log(f"{s.name:17s} cpu       {serial / (ENGINES * dt):12.1%}  ({dt:.2f} s, serial "
            f"{serial:.2f} s)")

    def _hetero(self, s: System) -> None:
        w = self.w
        t = now()
        out = s.map(spin, w.het_args)
        dt = now() - t
        assert out == list(range(w.het_items))
        ideal = self._serial("hetero") / ENGINES
        self.add("hetero_makespan_over_ideal", s.name, dt / ideal)
        log(f"{s.name:17s} hetero    {dt / ideal:12.3f}x  ({dt:.2f} s, ideal {ideal:.2f} s)")

    def _warm(self, s: System) -> None:
        """A second map of one trivial item on the running system (fixed cost of a cell)."""
        times = []
        for i in range(11):
            t = now()
            out = s.map(noop, [(i,)])
            times.append(now() - t)
            assert out == [i]
        self.add("warm_cell_overhead_s", s.name, statistics.median(times))
        log(f"{s.name:17s} warm map  {statistics.median(times) * 1e3:10.1f} ms")

    def _push(self, s: System) -> None:
        arr = self.w.array
        t = now()
        s.push(arr)
        dt = now() - t
        s.verify_push(arr)
        rate = self.w.push_bytes / MB / dt
        self.add("push_mb_s_per_engine", s.name, rate)
        log(f"{s.name:17s} push      {rate:10.0f} MB/s per engine ({dt:.2f} s)")

    _serial_cache: dict[str, float]

    def _serial(self, which: str) -> float:
        """Serial time of a workload in this process, measured once per repeat."""
        return self._serial_cache[which]

    def measure_serial(self) -> None:
        passes = 2 if self.quick else 3
        self._serial_cache = {
            "cpu": self.w.serial_seconds(self.w.cpu_args, passes),
            "hetero": self.w.serial_seconds(self.w.het_args, passes),
        }
        self.add("serial_s", "cpu", self._serial_cache["cpu"])
        self.add("serial_s", "hetero", self._serial_cache["hetero"])
        log(f"serial: cpu {self._serial_cache['cpu']:.2f} s, hetero "
            f"{self._serial_cache['hetero']:.2f} s")

    def run_local(self) -> None:
        import numpy  # noqa: F401  (import cost not in any timing)
        import kubemagic.session  # noqa: F401
        import ipyparallel  # noqa: F401
        import dask.distributed  # noqa: F401

        self.w.array  # noqa: B018  (allocate once)
        for rep in range(self.repeats):
            log(f"--- repeat {rep + 1}/{self.repeats}")
            systems: list[tuple[System, dict[str, Any]]] = [
                (Kubemap(), dict(start_key="kubemap_local")),
                (IppDefault(), dict(start_key="ipp_default")),
                (Dask(), dict(start_key="dask")),
                (ProcessPool(1), dict(push=False)),
                (ProcessPool("auto"), dict(push=False)),
                (Kubemap(curve=True), dict(workloads=False, start_key="kubemap_local_curve")),
                (Kubemap(socket=True), dict(workloads=False)),
            ]
            if not self.quick:
                systems.append((IppDefault(curve=True),
                                dict(workloads=False, start_key="ipp_default_curve")))
            if self.args.only:
                systems = [(s, kw) for s, kw in systems if s.name in self.args.only]
            if any(kw.get("workloads", True) for _, kw in systems):
                self.measure_serial()
            k = rep % len(systems) if systems else 0
            for system, kw in systems[k:] + systems[:k]:
                self.run_system(system, **kw)
        if not self.args.no_kernel and (not self.args.only or "kernel" in self.args.only):
            self.run_kernel_overhead()

    # -- %%kubemap in a real kernel --------------------------------------------------------------
    def run_kernel_overhead(self) -> None:
        """Fixed cost of a warm ``%%kubemap`` cell in a real IPython kernel.

        overhead = median wall time (execute_request -> execute_reply, seen by the
        frontend) of a ``%%kubemap f items`` cell mapping one item, minus that of a plain
        cell doing the same work locally. Needs ``kubemagic.magics`` (the magic).
        """
        import importlib.util

        if importlib.util.find_spec("kubemagic.magics") is None:
            self.info["kernel_overhead"] = "skipped: kubemagic.magics does not exist yet"
            log("kernel: " + self.info["kernel_overhead"])
            return
        try:
            from jupyter_client.manager import start_new_kernel
        except ImportError as e:
            self.info["kernel_overhead"] = f"skipped: {e}"
            return
        km = kc = None
        try:
            km, kc = start_new_kernel(kernel_name="python3")  # inherits IPYTHONDIR

            def run(code: str) -> float:
                t = now()
                reply = kc.execute_interactive(code, timeout=120,
                                               output_hook=lambda msg: None)
                dt = now() - t
                if reply["content"]["status"] != "ok":
                    raise RuntimeError(f"cell failed: {reply['content']}")
                return dt

            run("%load_ext kubemagic\nitems = [1]")
            magic = ("%%kubemap f items --backend local -n 2 --no-progress --out r\n"
                     "def f(x):\n    return x\n")
            plain = "def f(x):\n    return x\nr = [f(x) for x in items]\n"
            t_first = run(magic)
            run("assert r == [1], r")
            mags, plains = [], []
            for _ in range(7 if self.quick else 15):
                mags.append(run(magic))
                plains.append(run(plain))
            self.info["kernel_first_cell_s"] = t_first
            self.add("warm_cell_overhead_s", "kubemap_magic",
                     statistics.median(mags) - statistics.median(plains))
            self.info["kernel_overhead"] = {
                "magic_cell_s": statistics.median(mags),
                "plain_cell_s": statistics.median(plains)}
            log(f"kernel: first %%kubemap cell {t_first:.2f} s; warm overhead "
                f"{(statistics.median(mags) - statistics.median(plains)) * 1e3:.1f} ms")
            with contextlib.suppress(Exception):
                run("%kubemap stop")
        except Exception as e:
            self.error("kernel %%kubemap", e)
        finally:
            if kc is not None:
                kc.stop_channels()
            if km is not None:
                km.shutdown_kernel(now=False)

    # -- scale and ceilings (--scale) ------------------------------------------------------------
    def run_scale(self) -> None:
        """bench/scale_bench.py; the warm-cell measurement too, unless it ran already."""
        scale_bench.run(self, scale_bench.Shipped(noop, array_digest), quick=self.quick)
        if not self.args.no_kernel and "kubemap_magic" not in self.samples.get(
                "warm_cell_overhead_s", {}):
            self.run_kernel_overhead()

    # -- Kubernetes (--cluster) ------------------------------------------------------------------
    def run_cluster(self) -> None:
        import k8s_bench

        k8s_bench.run(self, quick=self.quick)

    def merge(self, path: str) -> None:
        """Adopt another run's samples for the metrics/keys this run did not measure."""
        other = json.loads(Path(path).read_text())
        taken = []
        for metric, by_key in (other.get("samples") or {}).items():
            for key, values in by_key.items():
                if not self.samples.get(metric, {}).get(key):
                    self.samples.setdefault(metric, {})[key] = list(values)
                    taken.append(f"{metric}.{key}")
        meta = other.get("metadata") or {}
        if meta.get("k8s") and not self.info.get("k8s"):
            self.info["k8s"] = meta["k8s"]
        self.info["merged_from"] = {"file": str(path), "started": meta.get("started"),
                                    "keys": taken, "errors": meta.get("errors")}
        if any(k.startswith("k8s_") for k in taken):
            self.args.cluster = True

    # -- output ----------------------------------------------------------------------------------
    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for metric, by_key in self.samples.items():
            out[metric] = {k: median(v) for k, v in by_key.items()}
        for metric, keys in REQUIRED.items():
            if self.args.cluster or not metric.startswith("k8s_"):
                for k in keys:
                    out.setdefault(metric, {}).setdefault(k, None)
        out["metadata"] = {
            "quick": self.quick,
            "repeats": self.repeats,
            "engines": ENGINES,
            "statistic": "median over repeats (raw values under samples)",
            "machine": machine(),
            "workloads": self.w.metadata(),
            "processes_started": self.info["processes"],
            "curve": self.info["curve"],
            "kernel_overhead": self.info.get("kernel_overhead"),
            "kernel_first_cell_s": self.info.get("kernel_first_cell_s"),
            "k8s": self.info.get("k8s"),
            "errors": self.info["errors"],
            "merged_from": self.info.get("merged_from"),
            "scale": {k: self.info[k] for k in ("scale_note", "scale", "push_fanout",
                                                "map_memory") if k in self.info} or None,
            "kubemagic_imported_from": _kubemagic_path(),
            "versions": versions(),
            "git": git_rev(),
            "started": self.info.get("started"),
            "loadavg_at_start": self.info.get("loadavg_at_start"),
            "duration_s": self.info.get("duration_s"),
        }
        out["samples"] = self.samples
        return out


REQUIRED = {
    "noop_items_per_s": ["kubemap", "ipp_default", "dask", "processpool_cs1", "processpool_auto"],
    "cpu_efficiency": ["kubemap", "ipp_default", "dask", "processpool_cs1", "processpool_auto"],
    "hetero_makespan_over_ideal": ["kubemap", "ipp_default", "dask", "processpool_cs1",
                                   "processpool_auto"],
    "start_s": ["kubemap_local", "ipp_default", "dask"],
    "warm_cell_overhead_s": ["kubemap"],
    "push_mb_s_per_engine": ["kubemap", "ipp_default", "dask", "kubemap_curve", "kubemap_socket"],
    "k8s_engines_ready_s": ["n2", "n8", "n32", "n2_ipp_plain", "n8_ipp_plain"],
    "k8s_warm_map_s": ["n2", "n32"],
    "k8s_noop_items_per_s": ["n2", "n32"],
    "k8s_first_result_s": ["kubemap", "ipp_plain"],
    "k8s_scale_up_s": ["kubemap", "ipp_plain"],
    "k8s_pod_loss_extra_s": ["kubemap", "ipp_plain"],
}


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    load = None
    with contextlib.suppress(OSError):
        load = Path("/proc/loadavg").read_text().split()[:3]
    return {"cpu": model, "cpus": os.cpu_count(), "memory": mem, "loadavg_at_end": load,
            "niceness": os.nice(0),
            "platform": platform.platform(), "python": sys.version.split()[0],
            "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE")}


def versions() -> dict[str, str]:
    out = {}
    for mod in ("kubemagic", "ipyparallel", "dask", "distributed", "zmq", "numpy"):
        with contextlib.suppress(Exception):
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", "?")
    with contextlib.suppress(Exception):
        import zmq

        out["libzmq"] = zmq.zmq_version()
    return out


def _kubemagic_path() -> str:
    """Which kubemagic was measured (a clean export of a commit on PYTHONPATH, or the tree)."""
    with contextlib.suppress(Exception):
        import kubemagic

        return str(Path(kubemagic.__file__).parent)
    return ""


def git_rev() -> str:
    with contextlib.suppress(Exception):
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=5).stdout.strip()
    return ""


# -- the markdown table --------------------------------------------------------------------------
TARGETS = {
    # metric, key: (description, check(value, result) -> bool | None, target text)
    ("noop_items_per_s", "kubemap"): (lambda v, r: v >= 50_000, ">= 50,000"),
    ("cpu_efficiency", "kubemap"): (lambda v, r: v >= 0.80, ">= 80%"),
    ("hetero_makespan_over_ideal", "kubemap"): (lambda v, r: v <= 1.10, "<= 1.10"),
    ("start_s", "kubemap_local"): (lambda v, r: v <= 1.5, "<= 1.5 s"),
    ("warm_cell_overhead_s", "kubemap"): (lambda v, r: v <= 0.050, "<= 50 ms"),
    ("warm_cell_overhead_s", "kubemap_magic"): (lambda v, r: v <= 0.050, "<= 50 ms"),
    ("push_mb_s_per_engine", "kubemap"): (
        lambda v, r: _get(r, "push_mb_s_per_engine", "dask") is not None
        and v >= _get(r, "push_mb_s_per_engine", "dask"), ">= dask"),
    ("push_mb_s_per_engine", "kubemap_curve"): (
        lambda v, r: _get(r, "push_mb_s_per_engine", "kubemap_socket") is not None
        and v >= 0.5 * _get(r, "push_mb_s_per_engine", "kubemap_socket"),
        ">= 50% of the plain socket"),
    ("k8s_engines_ready_s", "n2"): (lambda v, r: v <= 1.5, "<= 1.5 s"),
    ("k8s_engines_ready_s", "n8"): (lambda v, r: v <= 3.0, "<= 3 s"),
    ("k8s_scale_up_s", "kubemap"): (lambda v, r: v <= 1.5, "<= 1.5 s"),
    ("k8s_pod_loss_extra_s", "kubemap"): (lambda v, r: v <= 2.0, "<= 2 s"),
}


def _get(r: dict[str, Any], metric: str, key: str) -> float | None:
    return (r.get(metric) or {}).get(key)


def _fmt(metric: str, v: float | None) -> str:
    if v is None:
        return "–"
    if metric == "cpu_efficiency":
        return f"{v:.0%}"
    if metric == "noop_items_per_s" or metric.startswith("push_"):
        return f"{v:,.0f}"
    if metric == "warm_cell_overhead_s":
        return f"{v * 1e3:.1f} ms"
    if metric.endswith("_s"):
        return f"{v:.2f} s"
    return f"{v:.2f}"


HIGHER_IS_BETTER = {"noop_items_per_s", "cpu_efficiency", "push_mb_s_per_engine"}


def markdown(r: dict[str, Any]) -> str:
    md = r["metadata"]
    rows: list[tuple[str, str, str, str]] = []
    lines = [
        f"kubemagic benchmark — {md['machine']['cpus']} CPUs ({md['machine']['cpu']}), "
        f"Python {md['machine']['python']}, ipyparallel {md['versions'].get('ipyparallel')}, "
        f"dask {md['versions'].get('dask')}; {'quick' if md['quick'] else 'full'} run, "
        f"median of {md['repeats']} repeat(s)"
        + (f" (Kubernetes: {md['k8s']['repeats']}, pod loss {md['k8s']['pod_loss_repeats']})"
           if isinstance(md.get("k8s"), dict) and "repeats" in md["k8s"] else "")
        + f", {md['engines']} engines/workers; load average "
        f"{' '.join(md.get('loadavg_at_start') or [])} at start (a shared, noisy machine).",
        "",
        "| metric | kubemap | ipp default | dask | pool cs=1 | pool auto | target | holds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    layout = [
        ("noop map, items/s", "noop_items_per_s", "kubemap",
         ["ipp_default", "dask", "processpool_cs1", "processpool_auto"]),
        ("CPU-bound 200×10 ms, parallel efficiency", "cpu_efficiency", "kubemap",
         ["ipp_default", "dask", "processpool_cs1", "processpool_auto"]),
        ("heterogeneous, makespan / ideal", "hetero_makespan_over_ideal", "kubemap",
         ["ipp_default", "dask", "processpool_cs1", "processpool_auto"]),
        ("cold start to engines ready", "start_s", "kubemap_local",
         ["ipp_default", "dask", None, None]),
        ("warm map of 1 item (API)", "warm_cell_overhead_s", "kubemap",
         ["ipp_default", "dask", "processpool_cs1", "processpool_auto"]),
        ("warm `%%kubemap` cell overhead (kernel)", "warm_cell_overhead_s", "kubemap_magic",
         [None, None, None, None]),
        ("push 100 MB, MB/s per engine", "push_mb_s_per_engine", "kubemap",
         ["ipp_default", "dask", None, None]),
        ("push 100 MB through the controller's socket (as to pods), MB/s per engine",
         "push_mb_s_per_engine", "kubemap_socket", ["ipp_default", "dask", None, None]),
        ("push 100 MB with CurveZMQ, MB/s per engine", "push_mb_s_per_engine",
         "kubemap_curve", ["ipp_default_curve", None, None, None]),
        ("cold start with CurveZMQ", "start_s", "kubemap_local_curve",
         ["ipp_default_curve", None, None, None]),
    ]
    if "k8s_engines_ready_s" in r:
        layout += [
            ("k8s: Job create → 2 engines ready (ipp column: plain ipp, same Job)",
             "k8s_engines_ready_s", "n2", ["n2_ipp_plain", None, None, None]),
            ("k8s: Job create → 8 engines ready (ipp: plain)", "k8s_engines_ready_s", "n8",
             ["n8_ipp_plain", None, None, None]),
            ("k8s: start → first result (ipp: plain)", "k8s_first_result_s", "kubemap",
             ["ipp_plain", None, None, None]),
            ("k8s: scale 2 → 4 (ipp: plain)", "k8s_scale_up_s", "kubemap",
             ["ipp_plain", None, None, None]),
            ("k8s: pod loss, extra seconds (ipp: plain)", "k8s_pod_loss_extra_s", "kubemap",
             ["ipp_plain", None, None, None]),
        ]
    ratio_lines = []
    for label, metric, key, others in layout:
        v = _get(r, metric, key)
        if v is None and all(_get(r, metric, o) is None for o in others if o):
            continue  # not measured in this run (--only, --cluster-only)
        cells = [_fmt(metric, _get(r, metric, o)) if o else "" for o in others]
        check = TARGETS.get((metric, key))
        target, holds = "", ""
        if check is not None:
            target = check[1]
            holds = "–" if v is None else ("yes" if check[0](v, r) else "**no**")
        lines.append(f"| {label} | {_fmt(metric, v)} | " + " | ".join(cells)
                     + f" | {target} | {holds} |")
        if v is None:
            continue
        parts = []
        for o in others:
            b = _get(r, metric, o) if o else None
            if b is None or b == 0 or v == 0:
                continue
            factor = v / b if metric in HIGHER_IS_BETTER else b / v
            parts.append(f"{factor:.2f}× vs {o}")
        if parts:
            ratio_lines.append(f"| {label} | " + ", ".join(parts) + " |")
    lines += ["", "Ratios (kubemap advantage: > 1 means kubemap is better, for rates "
              "kubemap / baseline, for times and makespans baseline / kubemap):", "",
              "| metric | kubemap vs baselines |", "|---|---|", *ratio_lines]
    notes = [
        "",
        f"noop: kubemap and pool auto map N={md['workloads']['noop_n']:,}; ipp default and "
        f"dask (one task per item) N={md['workloads']['noop_n_ipp_default_and_dask']:,}; "
        f"pool cs=1 N={md['workloads']['noop_n_processpool_cs1']:,}. "
        "Efficiency = serial time / (2 × wall); heterogeneous = "
        f"{md['workloads']['hetero_items']} log-normal items with "
        f"{len(md['workloads']['hetero_stragglers'])} 20× stragglers, makespan / "
        "(serial time / 2). Warm map = a map of one trivial item on a running cluster.",
    ]
    notes.append(scale_bench.markdown(r))
    if md.get("errors"):
        notes.append("")
        notes.append("Errors: " + "; ".join(md["errors"]))
    return "\n".join(lines + notes) + "\n"


# -- main ----------------------------------------------------------------------------------------
def _exit_on_sigterm() -> None:
    """SIGTERM/SIGHUP run the ``finally`` blocks (clusters are stopped, nothing leaks)."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small N, one repeat (CI)")
    p.add_argument("--cluster", action="store_true",
                   help="also measure the Kubernetes backend on the test cluster")
    p.add_argument("--cluster-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=0, help="default: 5 (quick: 1)")
    p.add_argument("--json", default=str(RESULTS / "latest.json"), help="JSON output")
    p.add_argument("--md", default=None,
                   help="markdown table output (default: the JSON path with .md)")
    p.add_argument("--no-kernel", action="store_true",
                   help="skip the %%kubemap-in-a-real-kernel overhead measurement")
    p.add_argument("--merge", action="append", default=[], metavar="JSON",
                   help="take the samples of metrics not measured in this run from an earlier "
                   "run's JSON (e.g. a --cluster-only run, when the cluster was up at "
                   "another time); recorded in metadata.merged_from. Repeatable.")
    p.add_argument("--no-run", action="store_true",
                   help="measure nothing: combine the --merge files (the first one's "
                   "metadata) and write the JSON and table")
    p.add_argument("--scale", action="store_true",
                   help="also measure scale and ceilings (issue 12: 64 engines, 100 MB "
                   "fan-out, CurveZMQ, a 10M-item map's memory); takes several minutes and "
                   "~4 GiB, so opt-in; alone: --only scale")
    p.add_argument("--only", type=lambda v: v.split(","), default=None,
                   help="comma-separated subset (kubemap, ipp_default, dask, processpool_cs1, "
                   "processpool_auto, kubemap_curve, kubemap_socket, ipp_default_curve, kernel, "
                   "scale), for "
                   "development")
    args = p.parse_args(argv)
    _exit_on_sigterm()
    if args.cluster_only:
        args.cluster = True
    sys.path.insert(0, str(HERE))
    if args.cluster:
        import k8s_bench

        problem = k8s_bench.not_ready_reason()
        if problem:
            print(f"--cluster: cannot measure on Kubernetes: {problem}", file=sys.stderr)
            return 2

    if args.no_run:
        if not args.merge:
            p.error("--no-run needs at least one --merge JSON")
        result = combine(args.merge)
        return write_outputs(args, result)

    bench = Bench(args)
    bench.info["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    with contextlib.suppress(OSError):
        bench.info["loadavg_at_start"] = Path("/proc/loadavg").read_text().split()[:3]
    t0 = now()
    if not args.cluster_only and not (args.only and set(args.only) <= {"scale"}):
        bench.run_local()
    if args.scale or "scale" in (args.only or []):
        bench.run_scale()
    if args.cluster:
        bench.run_cluster()
    bench.info["duration_s"] = round(now() - t0, 1)
    for path in args.merge:
        bench.merge(path)
    result = bench.result()
    code = write_outputs(args, result)
    log(f"done in {bench.info['duration_s']} s")
    return code


def combine(paths: list[str]) -> dict[str, Any]:
    """Several runs' JSON as one: the first one's metadata and samples, plus the samples of
    metric keys it lacks from the others; medians recomputed."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    result = runs[0]
    samples = result.setdefault("samples", {})
    merged = []
    for path, other in zip(paths[1:], runs[1:]):
        taken = []
        for metric, by_key in (other.get("samples") or {}).items():
            for key, values in by_key.items():
                if not samples.get(metric, {}).get(key):
                    samples.setdefault(metric, {})[key] = list(values)
                    taken.append(f"{metric}.{key}")
        meta = other.get("metadata") or {}
        if meta.get("k8s") and not result["metadata"].get("k8s"):
            result["metadata"]["k8s"] = meta["k8s"]
        merged.append({"file": str(path), "started": meta.get("started"), "keys": taken,
                       "errors": meta.get("errors")})
    for metric, by_key in samples.items():
        result[metric] = {k: median(v) for k, v in by_key.items()}
    result["metadata"]["merged_from"] = merged
    return result


def write_outputs(args: argparse.Namespace, result: dict[str, Any]) -> int:
    table = markdown(result)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    md_path = Path(args.md) if args.md else out.with_suffix(".md")
    md_path.write_text(table)
    print(table)
    log(f"wrote {out} and {md_path}")
    with_k8s = args.cluster or "k8s_engines_ready_s" in result
    missing = [f"{m}.{k}" for m, keys in REQUIRED.items() for k in keys
               if (with_k8s or not m.startswith("k8s_"))
               and (result.get(m) or {}).get(k) is None
               and not (args.cluster_only and not m.startswith("k8s_"))
               and not (args.only and k not in args.only)]
    if args.scale or "scale" in (args.only or []):
        missing += [f"{m}.{k}" for m, keys in scale_bench.REQUIRED.items() for k in keys
                    if (result.get(m) or {}).get(k) is None]
    if missing or result["metadata"]["errors"]:
        log(f"FAILED: no value for {', '.join(missing) or '-'}; errors: "
            f"{result['metadata']['errors']}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
