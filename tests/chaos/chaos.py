"""Chaos: kill engines at random during many maps; count items lost and duplicated.

    python -m tests.chaos.chaos --maps 10 --kills 12 [--backend local|kubernetes] [--json OUT]

Each map squares 0..N-1 with a small sleep per item while a killer thread kills one random
engine at random moments (local: SIGKILL of the engine process; Kubernetes: deletion of an
engine pod, or SIGKILL of the engine process inside its container). A map's result must be
exactly ``[i * i for i in range(N)]``: any missing or wrong index is *lost*, any index whose
result appears twice is *duplicated*. On Kubernetes the Job replaces killed pods; on local
engines the session scales back up after each kill so the fleet keeps its size.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import threading
import time
from typing import Any, Callable

import kubemagic


def square_slowly(x: int) -> tuple[int, int]:
    import time as _t

    _t.sleep(0.02)
    return x, x * x


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
    """Delete a random engine pod (the Job replaces it)."""
    from kubernetes import client as k8s

    launcher = session.launcher
    core = k8s.CoreV1Api(launcher.api.client) if hasattr(launcher.api, "client") else k8s.CoreV1Api()
    pods = core.list_namespaced_pod(
        launcher.namespace, label_selector=f"app.kubernetes.io/instance={session.cluster_id}"
    ).items
    running = [p for p in pods if p.status.phase == "Running" and not p.metadata.deletion_timestamp]
    if not running:
        return "no pod to kill"
    pod = rng.choice(running)
    core.delete_namespaced_pod(pod.metadata.name, launcher.namespace, grace_period_seconds=0)
    return f"deleted pod {pod.metadata.name}"


def run(maps: int, kills: int, n_items: int, backend: str, seed: int,
        options: dict[str, Any], log: Callable[[str], None] = print) -> dict[str, Any]:
    rng = random.Random(seed)
    session = kubemagic.KubeCluster(n=2, backend=backend, retries=10, **options).start()
    killer = kill_local if backend == "local" else kill_pod
    totals = {"maps": 0, "kills": 0, "items": 0, "lost": 0, "duplicated": 0,
              "retried_chunks": 0, "seconds": 0.0}
    kills_per_map = [0] * maps
    for _ in range(kills):
        kills_per_map[rng.randrange(maps)] += 1
    try:
        for m in range(maps):
            handle = session.map_async(square_slowly, range(n_items))
            done_kills = []

            def kill_some(k: int = kills_per_map[m]) -> None:
                for _ in range(k):
                    time.sleep(rng.uniform(0.2, 1.0))
                    if handle.done():
                        return
                    done_kills.append(killer(session, rng))

            t = threading.Thread(target=kill_some)
            start = time.monotonic()
            t.start()
            results = handle.result()
            t.join()
            elapsed = time.monotonic() - start
            seen: dict[int, int] = {}
            for idx, sq in results:
                seen[idx] = seen.get(idx, 0) + 1
            lost = sum(1 for i in range(n_items) if seen.get(i, 0) == 0
                       or results[i] != (i, i * i))
            dup = sum(c - 1 for c in seen.values() if c > 1)
            totals["maps"] += 1
            totals["kills"] += len(done_kills)
            totals["items"] += n_items
            totals["lost"] += lost
            totals["duplicated"] += dup
            totals["retried_chunks"] += handle.progress().retried_chunks
            totals["seconds"] += elapsed
            log(f"map {m + 1}/{maps}: {len(done_kills)} kill(s) {done_kills}, "
                f"{lost} lost, {dup} duplicated, {elapsed:.1f} s")
    finally:
        session.stop()
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
    ap.add_argument("--json")
    a = ap.parse_args()
    options = {k: v for k, v in (("image", a.image), ("namespace", a.namespace),
                                 ("controller_address", a.controller_address)) if v}
    totals = run(a.maps, a.kills, a.items, a.backend, a.seed, options)
    print(json.dumps(totals, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(totals, f, indent=2)


if __name__ == "__main__":
    main()
