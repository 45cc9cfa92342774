"""Chaos: kill engines at random during many maps; count items lost and duplicated.

    python -m tests.chaos.chaos --maps 10 --kills 12 [--backend local|kubernetes] [--json OUT]
    python -m tests.chaos.chaos --backend kubernetes --maps 10 --kills 12 \
        --image kubemagic-engine:dev --namespace NS --controller-address 10.88.0.1 \
        [--kubeconfig FILE] [--process-kill-share 0.33]

Each map squares 0..N-1 with a small sleep per item while a killer thread kills one random
engine at random moments (local: SIGKILL of the engine process; Kubernetes: deletion of an
engine pod, or — every (1/``--process-kill-share``)-th kill — the engine process killed inside
its running container, from the kernel side: a task sends ``os.kill(os.getpid(), SIGKILL)``).
A map's result must be exactly
``[i * i for i in range(N)]``: any missing or wrong index is *lost*, any index whose result
appears twice is *duplicated*. Each execution of an item prints a line, which the map's item
log keeps: an item returned without any execution seen is *unexecuted*, executions beyond
the first are *re-runs* (the items of a chunk whose engine was killed run again
elsewhere); a map that fails with an error instead (e.g. no engine for ``start_timeout``
seconds) counts in ``failed_maps``, its message and the fleet's state in ``errors``. On
Kubernetes the Job replaces killed pods — after its per-index backoff, which doubles with
each loss of a slot (10 s, 20 s, ... up to 6 min; ignored failures count too), so many
kills on few slots eventually leave a map without engines for minutes. On local engines the
session scales back up after each kill so the fleet keeps its size. Kills a map ended too
early for are carried over to the next map.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import random
import signal
import threading
import time
from typing import Any, Callable

import ipyparallel as ipp

import kubemagic
from kubemagic.errors import KubemagicError


@ipp.interactive  # pickled by value: engine pods cannot import the tests package
def square_slowly(x: int) -> tuple[int, int]:
    import time as _t

    print("ran", x)  # one line per execution: the map's item log counts them
    _t.sleep(0.02)
    return x, x * x


def executions(handle: Any) -> dict[int, int]:
    """Item -> how many executions of it printed their line to the kernel (an execution
    cut short by a kill may not have: a lower bound, but never a made-up result)."""
    counts: dict[int, int] = {}
    for line in handle.output.log.lines:
        if line.stream == "stdout" and line.text.startswith("ran "):
            counts[line.index] = counts.get(line.index, 0) + 1
    return counts


def kill_local(session: Any, rng: random.Random) -> str:
    """SIGKILL a random local engine, then start a replacement as a Job would."""
    import psutil

    procs = {int(slot): el for slot, el in session.launcher.launchers.items()}
    if not procs:
        return "no engine to kill"
    slot = rng.choice(sorted(procs))
    pid = procs[slot].pid
    os.kill(pid, signal.SIGKILL)
    psutil.Process(pid).wait(10) if psutil.pid_exists(pid) else None
    deadline = time.monotonic() + 10
    while str(slot) in session.launcher.launchers and time.monotonic() < deadline:
        time.sleep(0.05)  # the launcher notices the exit
    session.scale(session.n, wait=False)
    return f"SIGKILL engine slot {slot} (pid {pid})"


def kill_pod(session: Any, rng: random.Random) -> str:
    """Delete a random engine pod (the Job replaces it), with the session's own API access
    (the least-privilege Role allows deleting pods)."""
    launcher = session.launcher
    pods = launcher.api.request(
        "GET",
        f"/api/v1/namespaces/{launcher.namespace}/pods",
        query={"labelSelector": f"app.kubernetes.io/instance={session.cluster_id}"},
    )["items"]
    running = [
        p["metadata"]["name"] for p in pods
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    ]
    if not running:
        return "no pod to kill"
    name = rng.choice(running)
    launcher.api.request(
        "DELETE",
        f"/api/v1/namespaces/{launcher.namespace}/pods/{name}",
        query={"gracePeriodSeconds": 0},
    )
    return f"deleted pod {name}"


@ipp.interactive
def _die() -> None:
    """Runs on an engine: SIGKILL itself (engine pods share their process namespace with
    the pause container, so the engine is not PID 1 and the signal is not ignored)."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def kill_engine_process(session: Any, rng: random.Random) -> str:
    """Kill the engine process inside a random running container, from the kernel side
    (no ``pods/exec`` needed): the container exits, the Job replaces the pod."""
    ready = session.ready_ids()
    if not ready:
        return "no engine to kill"
    eid = rng.choice(ready)
    info = session.fleet.engines.get(eid)
    try:
        pid = session.client[eid].apply_async(os.getpid).get(timeout=10)
    except Exception as e:  # noqa: BLE001 - it died meanwhile (another kill): count nothing
        return f"no engine to kill (engine {eid}: {type(e).__name__})"
    session.client[eid].apply_async(_die)
    slot = f"slot {info.index}, " if info is not None else ""
    return f"SIGKILL engine {eid} ({slot}pid {pid} in its container)"


def kubernetes_killer(process_share: float) -> Callable[[Any, random.Random], str]:
    """Pod deletions, with every (1/process_share)-th kill an engine process kill instead
    (deterministic, so a short run is sure to include both kinds)."""
    count = [0]

    def kill(session: Any, rng: random.Random) -> str:
        k = count[0]
        count[0] += 1
        if math.floor((k + 1) * process_share) > math.floor(k * process_share):
            return kill_engine_process(session, rng)
        return kill_pod(session, rng)

    return kill


def platform_state(session: Any) -> str:
    """What the fleet and the backend looked like when a map failed: the engines as the
    kernel sees them, the launcher's state and stop reason, and its diagnosis (for a Job:
    its status, each pod's phase and exit), so a failure in CI says why."""
    launcher = session.launcher
    engines = ", ".join(f"{e.id}:slot {e.index} {e.state}" for e in session.fleet.live())
    lines = [f"fleet: target {session.fleet.target}, borrowed {session.fleet.borrowed}, "
             f"engines [{engines}]",
             f"launcher: {launcher.state} {getattr(launcher, 'stop_data', None) or ''}"]
    try:
        lines.append(session._loop.run(launcher.diagnose(), timeout=30))
    except Exception as e:  # noqa: BLE001 - the state above is still worth printing
        lines.append(f"(no diagnosis: {type(e).__name__}: {e})")
    return "\n".join(lines)


def run(maps: int, kills: int, n_items: int, backend: str, seed: int,
        options: dict[str, Any], log: Callable[[str], None] = print, *,
        engines: int = 2, process_kill_share: float = 1 / 3) -> dict[str, Any]:
    rng = random.Random(seed)
    session = kubemagic.KubeCluster(n=engines, backend=backend, retries=10, **options).start()
    killer = kill_local if backend == "local" else kubernetes_killer(process_kill_share)
    totals: dict[str, Any] = {"backend": session.backend, "maps": 0, "kills": 0, "items": 0,
                              "lost": 0, "duplicated": 0, "retried_chunks": 0, "seconds": 0.0,
                              "failed_maps": 0, "errors": [], "executions": 0,
                              "unexecuted": 0, "reexecuted": 0}
    kinds: dict[str, int] = {}
    kills_per_map = [0] * maps
    for _ in range(kills):
        kills_per_map[rng.randrange(maps)] += 1
    carried = 0
    try:
        for m in range(maps):
            handle = session.map_async(square_slowly, range(n_items))
            done_kills: list[str] = []

            def kill_some(k: int = kills_per_map[m] + carried) -> None:
                for _ in range(k):
                    time.sleep(rng.uniform(0.2, 1.0))
                    if handle.done():
                        return
                    what = killer(session, rng)
                    if not what.startswith("no "):
                        done_kills.append(what)

            t = threading.Thread(target=kill_some)
            start = time.monotonic()
            t.start()
            try:
                # the items' own lines stay in the map's log (counted below), not on the
                # terminal: 300 lines per map would bury the run's summary and any failure
                with contextlib.redirect_stdout(io.StringIO()):
                    results = handle.result()
            except KubemagicError as e:  # the map failed, loudly: counted apart
                results, error = None, e
            t.join()
            elapsed = time.monotonic() - start
            totals["maps"] += 1
            totals["kills"] += len(done_kills)
            totals["items"] += n_items
            totals["retried_chunks"] += handle.progress().retried_chunks
            totals["seconds"] += elapsed
            carried = kills_per_map[m] + carried - len(done_kills)
            for what in done_kills:
                kind = what.split(" ", 1)[0]
                kinds[kind] = kinds.get(kind, 0) + 1
            if results is None:
                totals["failed_maps"] += 1
                state = platform_state(session)
                totals["errors"].append(f"map {m + 1}: {error.message}\n{state}")
                log(f"map {m + 1}/{maps}: {len(done_kills)} kill(s) {done_kills}, FAILED after "
                    f"{elapsed:.1f} s: {error.message}\n{state}")
                continue
            seen: dict[int, int] = {}
            for idx, sq in results:
                seen[idx] = seen.get(idx, 0) + 1
            lost = sum(1 for i in range(n_items) if seen.get(i, 0) == 0
                       or results[i] != (i, i * i))
            dup = sum(c - 1 for c in seen.values() if c > 1)
            totals["lost"] += lost
            totals["duplicated"] += dup
            ran = executions(handle)
            totals["executions"] += sum(ran.values())
            totals["unexecuted"] += sum(1 for i in range(n_items) if not ran.get(i))
            totals["reexecuted"] += sum(c - 1 for c in ran.values() if c > 1)
            log(f"map {m + 1}/{maps}: {len(done_kills)} kill(s) {done_kills}, "
                f"{lost} lost, {dup} duplicated, {sum(ran.values())} executions "
                f"({totals['reexecuted']} re-runs so far), {elapsed:.1f} s")
    finally:
        session.stop()
    totals["kill_kinds"] = kinds
    totals["seconds"] = round(totals["seconds"], 1)
    return totals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--maps", type=int, default=10)
    ap.add_argument("--kills", type=int, default=12)
    ap.add_argument("--items", type=int, default=300)
    ap.add_argument("--backend", default="local", choices=["local", "kubernetes"])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--image")
    ap.add_argument("--namespace")
    ap.add_argument("--controller-address")
    ap.add_argument("--kubeconfig")
    ap.add_argument("--engines", type=int, default=2)
    ap.add_argument("--process-kill-share", type=float, default=1 / 3,
                    help="kubernetes: share of kills that kill the engine process inside its "
                    "container instead of deleting the pod")
    ap.add_argument("--json")
    a = ap.parse_args()
    options = {k: v for k, v in (("image", a.image), ("namespace", a.namespace),
                                 ("controller_address", a.controller_address),
                                 ("kubeconfig", a.kubeconfig)) if v}
    totals = run(a.maps, a.kills, a.items, a.backend, a.seed, options, engines=a.engines,
                 process_kill_share=a.process_kill_share)
    print(json.dumps(totals, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(totals, f, indent=2)


if __name__ == "__main__":
    main()
