"""Where the time goes when a scale target of bench/scale_bench.py is missed: profiles and
measured what-ifs, each in a process of its own, printed as one JSON object.

The what-ifs change nothing in ``kubemagic/``: they set a module constant before a session
starts (the heartbeat), pass a map argument (chunksize), or start extra engines beside a
session the way a fork server would. They show what a proposed change would buy, measured
on the same machine in the same run as the baseline.

    python bench/scale_probe.py start-imports        # what an engine's start costs, by import
    python bench/scale_probe.py start-forked [N]     # N engines forked from one pre-imported
    python bench/scale_probe.py heartbeat [MS]       # 64 engines: idle CPU, no-op rate
    python bench/scale_probe.py planner [N]          # chunk floor scaled with engines, N engines
    python bench/scale_probe.py dispatch [N]         # cProfile of the dispatcher thread, N engines
    python bench/scale_probe.py curve [N [IO]]       # CurveZMQ push to N: CPU by process
    python bench/scale_probe.py all --json OUT       # every probe, one JSON file
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pstats
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from procstat import CpuMeter, descendants

HERE = Path(__file__).resolve().parent
N_ITEMS = 1_000_000
#: what an engine imports before it registers; a fork server would import it once
ENGINE_IMPORTS = ("ipyparallel.engine.app", "ipykernel.ipkernel", "ipykernel.debugger",
                  "ipyparallel.engine.kernel", "ipykernel.zmqshell", "kubemagic.remote",
                  "cloudpickle")
#: what the engine's import time is reported for (an engine uses none of ipyparallel.cluster
#: or debugpy, which ipykernel imports for its debugger)
PACKAGES_OF_INTEREST = ("ipyparallel", "ipyparallel.cluster", "ipyparallel.client",
                        "ipyparallel.engine.app", "ipykernel.ipkernel", "ipykernel.debugger",
                        "debugpy", "IPython", "jupyter_client", "zmq", "tornado",
                        "kubemagic.remote", "cloudpickle")


def noop(x):
    return x


def _session(n: int, **kw: Any) -> Any:
    import kubemagic

    return kubemagic.KubeCluster(n=n, backend="local", start_timeout=600, **kw)


def _noop_rate(c: Any, **kw: Any) -> dict[str, Any]:
    meter = CpuMeter().start()
    t = time.perf_counter()
    out = c.map(noop, range(N_ITEMS), progress=False, **kw)
    dt = time.perf_counter() - t
    assert len(out) == N_ITEMS
    return {"items_per_s": round(N_ITEMS / dt), "chunks": c.current_map.run._next_id,
            "cpu_s": meter.stop()}


# -- engine start ------------------------------------------------------------------------------
def _import_cpu(code: str, *flags: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter; its stdout ends with the CPU seconds it used."""
    return subprocess.run([sys.executable, *flags, "-c", code + "; import resource; "
                           "r = resource.getrusage(0); print(r.ru_utime + r.ru_stime)"],
                          capture_output=True, text=True, check=True)


def start_imports() -> dict[str, Any]:
    """CPU of importing what an engine imports, the largest packages in it (``-X
    importtime``), and the what-if of an engine that blocks ``debugpy`` (ipykernel then
    runs without its debugger, which an engine never uses)."""
    code = "import " + ", ".join(ENGINE_IMPORTS)
    no_debugpy = [float(_import_cpu("import sys; sys.modules['debugpy'] = None; " + code)
                        .stdout.split()[-1]) for _ in range(3)]
    plain = [float(_import_cpu(code).stdout.split()[-1]) for _ in range(3)]
    t = time.perf_counter()
    proc = _import_cpu(code, "-X", "importtime")
    wall = time.perf_counter() - t
    cumulative: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|\s*(\S+)", line)
        if m and m.group(2) in PACKAGES_OF_INTEREST:
            cumulative[m.group(2)] = int(m.group(1)) / 1e6
    return {"imports_cpu_s": round(statistics.median(plain), 3),
            "imports_cpu_s_debugpy_blocked": round(statistics.median(no_debugpy), 3),
            "imports_wall_s": round(wall, 3),
            "cumulative_import_s": {k: round(v, 3) for k, v in sorted(
                cumulative.items(), key=lambda kv: -kv[1])},
            "note": "cumulative -X importtime of the first import of each; nested packages "
                    "are counted in their parents too"}


_FORK_SERVER = r"""
import os, sys
{imports}
pids = []
for i in range(int(sys.argv[1]), int(sys.argv[2])):
    pid = os.fork()
    if pid == 0:
        os.environ["KUBEMAGIC_ENGINE_INDEX"] = str(i)
        from ipyparallel.engine.app import IPEngine
        IPEngine.launch_instance(argv=["--IPEngine.max_heartbeat_misses=10",
                                       "--IPEngine.enable_nanny=False", "--log-level=40"])
        os._exit(0)
    pids.append(pid)
for pid in pids:
    os.waitpid(pid, 0)
"""


def start_forked(n: int) -> dict[str, Any]:
    """What-if for a fork-server launcher: a session of 1 engine, then ``n - 1`` engines
    forked from one process that imported the engine's modules once; seconds until all are
    ready (registered, replayed, slot known), and their CPU."""
    c = _session(1)
    server = None
    try:
        c.start()
        c.fleet.target = n  # the extra slots count as wanted (else they would be drained)
        env = dict(os.environ, IPP_PROFILE_DIR=c.controller.profile_dir,
                   IPP_CLUSTER_ID=c.cluster_id)
        code = _FORK_SERVER.format(imports="import " + ", ".join(ENGINE_IMPORTS))
        meter = CpuMeter().start()
        t = time.perf_counter()
        server = subprocess.Popen([sys.executable, "-c", code, "1", str(n)], env=env)
        while len(c.ready_ids()) < n or any(e.index < 0 for e in c.fleet.live()):
            if time.perf_counter() - t > 600:
                raise TimeoutError(f"{len(c.ready_ids())} of {n} engines after 600 s")
            time.sleep(0.02)
        ready = time.perf_counter() - t
        cpu = meter.stop()
        rate = _noop_rate(c)
        return {"engines_forked": n - 1, "ready_s": round(ready, 2), "cpu_s": cpu,
                # the forked engines count as engines (their command line names IPEngine)
                "cpu_per_forked_engine_s": round(cpu.get("engines", 0) / (n - 1), 3),
                "noop_after": rate}
    finally:
        with contextlib.suppress(Exception):
            c.client.shutdown(targets="all", block=False)
        c.stop()
        if server is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(15)
            if server.poll() is None:
                for pid in descendants(server.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, 9)
                server.kill()
                server.wait()


# -- heartbeat ---------------------------------------------------------------------------------
def heartbeat(period_ms: int, n: int = 64) -> dict[str, Any]:
    """``n`` engines with the controller's heartbeat at ``period_ms`` (misses scaled to keep
    ~2 s loss detection): idle CPU of the fleet, and the no-op rate auto and at 40 chunks."""
    from kubemagic import controller

    controller.HEARTBEAT_MS = period_ms
    controller.HEARTMONITOR_MISSES = max(2, 2000 // period_ms)
    c = _session(n)
    try:
        t = time.perf_counter()
        c.start()
        ready = time.perf_counter() - t
        c.map(noop, range(1000), progress=False)
        meter = CpuMeter().start()
        time.sleep(3.0)
        idle = meter.stop()
        return {"period_ms": period_ms, "misses": controller.HEARTMONITOR_MISSES,
                "ready_s": round(ready, 2),
                "idle_cpu_cores": round((idle.get("engines", 0) + idle.get("controller", 0))
                                        / 3.0, 3),
                "noop_auto": [_noop_rate(c) for _ in range(2)],
                "noop_chunksize_25000": [_noop_rate(c, chunksize=25_000) for _ in range(2)]}
    finally:
        c.stop()


# -- chunk sizes -------------------------------------------------------------------------------
#: serial client CPU per chunk (s): what the dispatcher thread spends on each chunk it sends
#: and collects (profile of ``dispatch 64``); the what-if floor below is built on it
CLIENT_CHUNK_S = 0.002


def planner(n: int = 64) -> dict[str, Any]:
    """What-if for ``kubemagic/chunking.py``: once the per-item time is known, no chunk
    carries less than ``engines * CLIENT_CHUNK_S`` of work (a single dispatcher thread sends
    at most ~1 / CLIENT_CHUNK_S chunks a second to the whole fleet). The current planner
    and the variant alternate on one session of ``n`` engines, 1M no-op items each. Up to
    2 engines the variant's floor is below ``MIN_CHUNK_SECONDS``: it is the current planner."""
    from kubemagic import dispatch as d
    from kubemagic.chunking import ChunkPlanner

    class EngineScaledFloor(ChunkPlanner):
        def size(self, remaining: int, engines: int) -> int:
            size = super().size(remaining, engines)
            if self.chunksize != "auto" or self.item_seconds is None:
                return size
            per_item = max(self.item_seconds, self.MIN_ITEM_SECONDS)
            budget = max(1, int(self.target / per_item))
            floor = int(max(engines, 1) * CLIENT_CHUNK_S / per_item)
            return min(max(size, min(floor, budget)), remaining)

    c = _session(n)
    out: dict[str, Any] = {"engines": n, "current": [], "engine_scaled_floor": []}
    try:
        c.start()
        c.map(noop, range(1000), progress=False)
        for _ in range(3):
            for key, cls in (("current", ChunkPlanner), ("engine_scaled_floor",
                                                         EngineScaledFloor)):
                d.ChunkPlanner = cls
                try:
                    out[key].append(_noop_rate(c))
                finally:
                    d.ChunkPlanner = ChunkPlanner
    finally:
        c.stop()
    return out


# -- the dispatcher ----------------------------------------------------------------------------
def dispatch(n: int) -> dict[str, Any]:
    """cProfile of the map's dispatcher thread for a 1M no-op map on ``n`` engines: the
    functions with the most own time (wall time of that thread; waits included)."""
    import cProfile

    from kubemagic import dispatch as d

    profiles: list[cProfile.Profile] = []
    original: Callable[[Any], None] = d.MapHandle._dispatch

    def profiled(handle: Any) -> None:
        pr = cProfile.Profile()
        pr.enable()
        try:
            original(handle)
        finally:
            pr.disable()
            profiles.append(pr)

    c = _session(n)
    try:
        c.start()
        c.map(noop, range(1000), progress=False)
        d.MapHandle._dispatch = profiled
        rate = _noop_rate(c)
    finally:
        d.MapHandle._dispatch = original
        c.stop()
    text = io.StringIO()
    stats = pstats.Stats(profiles[-1], stream=text)
    stats.sort_stats("tottime").print_stats(18)
    rows = [re.sub(r"\s+", " ", line.strip()) for line in text.getvalue().splitlines()
            if re.match(r"\s*\d", line)]
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    return {"engines": n, "noop": rate, "dispatcher_thread_s": round(total, 2),
            "top_own_time": [r.replace(str(Path(d.__file__).parent.parent) + "/", "")
                             .replace(sys.prefix + "/lib/python3.11/site-packages/", "")
                             for r in rows]}


# -- CurveZMQ -----------------------------------------------------------------------------------
def curve(n: int = 2, io_threads: int = 1, nbytes: int = 100 * 10**6) -> dict[str, Any]:
    """CPU by process of a 100 MB push to ``n`` engines with CurveZMQ: session.push (one
    message per engine through the controller) and BroadcastView (one to the controller);
    the controller's ZeroMQ context gets at most ``io_threads`` I/O threads (CurveZMQ
    encrypts and decrypts on them)."""
    import numpy as np

    from kubemagic import controller

    controller.MAX_IO_THREADS = io_threads  # min(this, cores)
    arr = np.random.default_rng(0).random(nbytes // 8)
    os.environ["IPP_ENABLE_CURVE"] = "1"
    c = _session(n)
    try:
        try:
            c.start()
        finally:
            os.environ.pop("IPP_ENABLE_CURVE", None)
        out: dict[str, Any] = {"engines": n, "controller_io_threads": io_threads}
        for how in ("session", "broadcast_view", "session", "broadcast_view"):
            meter = CpuMeter().start()
            t = time.perf_counter()
            if how == "session":
                c.push(probe_array=arr)
            else:
                c.client.broadcast_view(targets=c.ready_ids()).push({"probe_bv": arr},
                                                                    block=True)
            dt = time.perf_counter() - t
            out.setdefault(how, []).append({"s": round(dt, 2),
                                            "mb_s_per_engine": round(nbytes / 1e6 / dt),
                                            "cpu_s": meter.stop()})
        return out
    finally:
        c.stop()


PROBES: dict[str, Callable[..., dict[str, Any]]] = {
    "start-imports": start_imports, "start-forked": start_forked, "heartbeat": heartbeat,
    "planner": planner, "dispatch": dispatch, "curve": curve,
}
#: ``all``: every probe with its arguments, each in its own process
ALL = [("start-imports",), ("start-forked", 64), ("heartbeat", 100), ("heartbeat", 500),
       ("planner", 64), ("dispatch", 2), ("dispatch", 64), ("curve", 2),
       ("curve", 2, 2), ("curve", 16)]


def run_all(out: Path) -> int:
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    failed = 0
    for name, *params in ALL:
        key = " ".join([name, *map(str, params)])
        cmd = [sys.executable, str(Path(__file__).resolve()), name, *map(str, params)]
        print(f"[probe {time.strftime('%H:%M:%S')}] {key}", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if proc.returncode == 0:
            results[key] = json.loads(proc.stdout.strip().splitlines()[-1])
        else:
            failed += 1
            results[key] = {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
        print(json.dumps(results[key])[:400], file=sys.stderr, flush=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return 1 if failed else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("probe", choices=[*PROBES, "all"])
    p.add_argument("args", nargs="*", type=int, help="the probe's numbers (see above)")
    p.add_argument("--json", default=None, help="output of 'all'")
    args = p.parse_args()
    os.environ.setdefault("IPYTHONDIR", tempfile.mkdtemp(prefix="kubemagic-bench-ipython-"))
    if args.probe == "all":
        if not args.json:
            p.error("all needs --json OUT")
        return run_all(Path(args.json))
    print(json.dumps(PROBES[args.probe](*args.args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
