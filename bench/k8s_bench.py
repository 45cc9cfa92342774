"""The ``--cluster`` part of the benchmark: kubemagic's Kubernetes backend on the test cluster,
and plain ipyparallel engines in the same Job shape, in the same run.

Keys (medians over repeats), each with an ``_ipp_plain`` twin:

* ``k8s_engines_ready_s.n2`` / ``.n8`` / ``.n32`` -- Job create request -> all engines ready
* ``k8s_warm_map_s.n2`` / ``.n32``, ``k8s_noop_items_per_s.n2`` / ``.n32`` -- a warm one-item
  map and a 20,000-item no-op map on 2 and on 32 engine pods
  (kubemap: ``KubeCluster.start()`` returns; plain: ``rc.wait_for_engines(n)`` returns);
* ``k8s_first_result_s`` -- from nothing (session object created) to the first result of a
  one-item map: what a user waits for on a first cell;
* ``k8s_scale_up_s`` -- 2 -> 4 engines, request -> the 2 new engines ready;
* ``k8s_pod_loss_extra_s`` -- a map of 400 x 50 ms items on 2 engines in which one engine
  pod is deleted (``kubectl delete pod``: SIGTERM, default grace) a third of the way in,
  minus the same map without the loss.

"plain ipyparallel" = ``ipp.Cluster(engines="kubernetes")`` (kubemagic's launcher, so the
Job, Secret and pod spec are the same) with ipyparallel's defaults everywhere else: its
default controller (processes, 3000 ms heartbeat), plain ``python -m ipyparallel.engine``
in the pods, ``load_balanced_view().map_sync`` (with ``retries=1`` for the pod-loss map, or
it would just fail).

The cluster is the one of ``tests/cluster`` (``$KUBEMAGIC_CLUSTER_STATE/env``); the backend
runs with the admin kubeconfig in a namespace created for the run and deleted after.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

STATE = Path(os.environ.get("KUBEMAGIC_CLUSTER_STATE", "/var/lib/kubemagic-cluster"))
DEFAULT_KUBECONFIG = STATE / "admin.kubeconfig"
DEFAULT_HOST_IP = "10.88.0.1"
DEFAULT_IMAGE = "kubemagic-engine:dev"


def cluster_env() -> dict[str, str]:
    env = {"KUBECONFIG": str(DEFAULT_KUBECONFIG), "KUBEMAGIC_TEST_HOST_IP": DEFAULT_HOST_IP,
           "KUBEMAGIC_TEST_IMAGE": DEFAULT_IMAGE}
    with contextlib.suppress(OSError):
        for line in (STATE / "env").read_text().splitlines():
            k, _, v = line.partition("=")
            if k and v:
                env[k.strip()] = v.strip()
    for k in list(env):
        env[k] = os.environ.get("BENCH_" + k, env[k])
    return env


def not_ready_reason() -> str | None:
    """Why ``--cluster`` cannot run now (None when it can): no cluster, no backend, no image."""
    env = cluster_env()
    kubeconfig = env["KUBECONFIG"]
    if not Path(kubeconfig).exists():
        return (f"no admin kubeconfig at {kubeconfig}: bring the test cluster up first "
                "(sudo bash tests/cluster/up)")
    try:
        import kubemagic.k8s.backend  # noqa: F401
        import kubemagic.k8s.launcher  # noqa: F401
    except ImportError as e:
        return f"the Kubernetes backend is not available yet ({e})"
    try:
        from kubernetes import client, config

        api = config.new_client_from_config(config_file=kubeconfig)
        try:
            nodes = client.CoreV1Api(api).list_node(_request_timeout=10).items
        finally:
            api.close()
    except Exception as e:
        return f"the test cluster's API server does not answer ({type(e).__name__}: {e})"
    ready = [n for n in nodes if any(c.type == "Ready" and c.status == "True"
                                     for c in (n.status.conditions or []))]
    if not ready:
        return "no Ready node in the test cluster"
    image = env["KUBEMAGIC_TEST_IMAGE"]
    names = {name for n in ready for i in (n.status.images or []) for name in (i.names or [])}
    if names and not any(name == image or name.endswith("/" + image) for name in names):
        return f"image {image} is not present on the node (tests/cluster/build-images.sh)"
    return None


# -- workload functions (shipped by value) ----------------------------------------------------
def noop(x):
    return x


def sleep_item(i, seconds=0.05):
    import time

    time.sleep(seconds)
    return i


# ship them by value, as a notebook's functions are: the engine image has no bench module
noop.__module__ = sleep_item.__module__ = "__main__"


def _retry_ports(make: Callable[[], Any], timeout: float = 90) -> tuple[Any, float]:
    """Construct a session, waiting while the controller port range is exhausted (ports of
    just-stopped controllers or of concurrent test runs), instead of failing the run.
    Returns the object and the seconds spent waiting (not counted in any timing)."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    waited = 0.0
    while True:
        try:
            return make(), waited
        except Exception as e:
            if "free consecutive ports" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(2)
            waited = time.monotonic() - t0


class Cluster:
    """The namespace, admin API and launcher hooks shared by the measurements."""

    def __init__(self) -> None:
        from kubernetes import client, config

        self.env = cluster_env()
        self.kubeconfig = self.env["KUBECONFIG"]
        self.host_ip = self.env["KUBEMAGIC_TEST_HOST_IP"]
        self.image = self.env["KUBEMAGIC_TEST_IMAGE"]
        self.api = config.new_client_from_config(config_file=self.kubeconfig)
        self.core = client.CoreV1Api(self.api)
        self.namespace = f"bench-{uuid.uuid4().hex[:6]}"
        self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
            name=self.namespace, labels={"kubemagic-bench": "1"})))
        deadline = time.monotonic() + 60
        while True:  # pods need the namespace's default ServiceAccount
            try:
                self.core.read_namespaced_service_account("default", self.namespace)
                break
            except client.ApiException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.job_created: list[float] = []
        self._hook_launcher()

    def _hook_launcher(self) -> None:
        """Timestamp the moment each Job create request goes out (both systems use the same
        launcher, so "Job create" means the same thing for both)."""
        from kubemagic.k8s.launcher import KubernetesEngineSetLauncher as L

        if getattr(L, "_bench_hooked", False):
            self._launcher_cls = L
            return
        original = L._create
        created = self.job_created

        def _create(launcher, *a, **kw):
            created.append(time.monotonic())
            return original(launcher, *a, **kw)

        L._create = _create
        L._bench_hooked = True
        self._launcher_cls = L

    def pods(self, instance: str) -> list[Any]:
        return self.core.list_namespaced_pod(
            self.namespace, label_selector=f"app.kubernetes.io/instance={instance}").items

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.core.delete_namespace(self.namespace)
        self.api.close()


# -- kubemap ----------------------------------------------------------------------------------
class KubemapK8s:
    def __init__(self, cl: Cluster, n: int) -> None:
        import kubemagic

        self.cl = cl
        self.t_created = time.monotonic()
        self.c, waited = _retry_ports(lambda: kubemagic.KubeCluster(
            n=n, backend="kubernetes", image=cl.image, namespace=cl.namespace,
            controller_address=cl.host_ip, kubeconfig=cl.kubeconfig))
        self.t_created += waited

    def start(self) -> None:
        self.c.start()

    @property
    def instance(self) -> str:
        return self.c.cluster_id

    def map(self, func: Callable[..., Any], items: list[Any]) -> list[Any]:
        return self.c.map(func, items, progress=False)

    def map_async(self, func, items):
        h = self.c.map_async(func, items)
        return lambda: h.result()

    def scale(self, n: int) -> None:
        self.c.scale(n)

    def stop(self) -> None:
        self.c.stop()


# -- plain ipyparallel in the same Job shape -----------------------------------------------------
class PlainIppK8s:
    def __init__(self, cl: Cluster, n: int) -> None:
        import ipyparallel as ipp
        from traitlets.config import Config

        from kubemagic.k8s.ports import free_port_window

        self.cl, self.n = cl, n
        self.t_created = time.monotonic()
        self.profile = tempfile.mkdtemp(prefix="bench-ipp-k8s-")
        ports, waited = _retry_ports(lambda: free_port_window(47100, 47199))
        self.t_created += waited
        self.cluster = ipp.Cluster(
            engines="kubernetes",
            controller_ip="0.0.0.0",
            controller_location=cl.host_ip,
            # the port window is what makes the controller reachable through the test
            # cluster's firewall; everything else is ipyparallel's default
            controller_args=[f"--IPController.ports={ports[0]}-{ports[-1]}"],
            profile_dir=self.profile,
            shutdown_atexit=False,
            log_level=logging.ERROR,
            config=Config({"KubernetesEngineSetLauncher": {
                "namespace": cl.namespace, "kubeconfig": cl.kubeconfig, "image": cl.image,
                "engine_cmd": ["python", "-m", "ipyparallel.engine"],
            }}),
        )
        self.rc = None
        self._loop = _Loop()

    def start(self) -> None:
        self._loop.run(self.cluster.start_controller())
        self._loop.run(self.cluster.start_engines(self.n))
        self.rc = self._loop.run(self.cluster.connect_client())
        self.rc.wait_for_engines(self.n, timeout=300)
        self.lview = self.rc.load_balanced_view()

    @property
    def instance(self) -> str:
        return self.cluster.cluster_id

    def map(self, func, items):
        return self.lview.map_sync(func, items)

    def map_async(self, func, items):
        view = self.rc.load_balanced_view()
        view.set_flags(retries=1)
        ar = view.map_async(func, items)
        return ar.get

    def scale(self, n: int) -> None:
        launcher = next(iter(self.cluster.engines.values()))
        self._loop.run(launcher.scale(n))
        self.rc.wait_for_engines(n, timeout=300)

    def stop(self) -> None:
        if self.rc is not None:
            with contextlib.suppress(Exception):
                self.rc.close()
        with contextlib.suppress(Exception):
            self._loop.run(self.cluster.stop_cluster(), timeout=180)
        self._loop.close()


class _Loop:
    def __init__(self) -> None:
        import asyncio

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 300):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# -- measurements -----------------------------------------------------------------------------
def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] k8s {msg}", file=sys.stderr, flush=True)


def measure_start(bench: Any, cl: Cluster, system_cls: type, suffix: str, n: int,
                  scale: bool) -> None:
    s = system_cls(cl, n)
    before = len(cl.job_created)
    try:
        s.start()
        ready_at = time.monotonic()
        if len(cl.job_created) <= before:
            raise RuntimeError("the launcher never created a Job (hook not called)")
        job_at = cl.job_created[before]
        bench.add("k8s_engines_ready_s", f"n{n}{suffix}", ready_at - job_at)
        out = s.map(noop, [1])
        assert list(out) == [1]
        first = time.monotonic() - s.t_created
        if n == 2:
            bench.add("k8s_first_result_s", "kubemap" if not suffix else "ipp_plain", first)
        _log(f"{system_cls.__name__} n={n}: engines ready {ready_at - job_at:.2f} s after "
             f"Job create, first result {first:.2f} s after start")
        if scale:
            t = time.monotonic()
            s.scale(4)
            dt = time.monotonic() - t
            bench.add("k8s_scale_up_s", "kubemap" if not suffix else "ipp_plain", dt)
            _log(f"{system_cls.__name__} scale 2 -> 4: {dt:.2f} s")
    finally:
        s.stop()


def measure_fleet(bench: Any, cl: Cluster, n: int, items: int = 20_000) -> None:
    """``n`` engine pods: Job create -> all ready, then what a map costs on that many — a
    warm one-item map (the per-map overhead) and a no-op map (the dispatcher's ceiling)."""
    s = KubemapK8s(cl, n)
    before = len(cl.job_created)
    try:
        s.start()
        ready = time.monotonic() - cl.job_created[before]
        bench.add("k8s_engines_ready_s", f"n{n}", ready)
        s.map(noop, list(range(n)))  # every engine warm
        t = time.monotonic()
        s.map(noop, [1])
        warm = time.monotonic() - t
        bench.add("k8s_warm_map_s", f"n{n}", warm)
        t = time.monotonic()
        assert list(s.map(noop, list(range(items)))) == list(range(items))
        rate = items / (time.monotonic() - t)
        bench.add("k8s_noop_items_per_s", f"n{n}", rate)
        _log(f"n={n}: ready {ready:.2f} s after Job create; warm 1-item map {warm * 1000:.1f} ms; "
             f"no-op {rate:,.0f} items/s")
    finally:
        s.stop()


def measure_pod_loss(bench: Any, cl: Cluster, system_cls: type, key: str,
                     items: int = 400) -> None:
    s = system_cls(cl, 2)
    try:
        s.start()
        s.map(noop, list(range(4)))  # warm: functions, imports
        args = list(range(items))
        t = time.monotonic()
        out = s.map(sleep_item, args)
        base = time.monotonic() - t
        assert list(out) == args
        t = time.monotonic()
        wait = s.map_async(sleep_item, args)
        time.sleep(base / 3)
        pods = [p for p in cl.pods(s.instance) if p.status.phase == "Running"]
        if not pods:
            raise RuntimeError("no running engine pod to delete")
        victim = sorted(pods, key=lambda p: p.metadata.name)[-1].metadata.name
        cl.core.delete_namespaced_pod(victim, cl.namespace)
        out = wait()
        lossy = time.monotonic() - t
        assert sorted(out) == args, "items lost or duplicated"
        bench.add("k8s_pod_loss_extra_s", key, lossy - base)
        _log(f"{system_cls.__name__} pod loss: {base:.2f} s without, {lossy:.2f} s with "
             f"(deleted {victim}) -> +{lossy - base:.2f} s")
    finally:
        s.stop()


def run(bench: Any, quick: bool = False) -> None:
    problem = not_ready_reason()
    if problem:
        raise RuntimeError(f"--cluster: {problem}")
    cl = Cluster()
    info: dict[str, Any] = {"namespace": cl.namespace, "image": cl.image,
                            "controller_address": cl.host_ip}
    bench.info["k8s"] = info
    repeats = 1 if quick else 3
    info["repeats"] = repeats
    info["pod_loss_repeats"] = 1 if quick else 2
    info["note"] = ("ipp_plain = ipp.Cluster(engines='kubernetes') with ipyparallel defaults "
                    "(3000 ms heartbeat, process controller, plain ipengine in the pods), "
                    "same Job/Secret/pod spec; pod loss = kubectl delete pod (SIGTERM, "
                    "default grace) a third into a 400 x 50 ms (sleep) map on 2 engines")
    _log(f"namespace {cl.namespace}, {repeats} repeat(s)")
    systems = [(KubemapK8s, ""), (PlainIppK8s, "_ipp_plain")]
    try:
        for rep in range(repeats):
            for system_cls, suffix in (systems if rep % 2 == 0 else systems[::-1]):
                for n in (2, 8):
                    try:
                        measure_start(bench, cl, system_cls, suffix, n, scale=(n == 2))
                    except Exception as e:
                        bench.error(f"k8s {system_cls.__name__} n={n}", e)
        for n in (2, 32):  # the per-map overhead of a large fleet, against a small one
            try:
                measure_fleet(bench, cl, n)
            except Exception as e:
                bench.error(f"k8s fleet n={n}", e)
        for system_cls, key in ((KubemapK8s, "kubemap"), (PlainIppK8s, "ipp_plain")):
            for _ in range(info["pod_loss_repeats"]):
                try:
                    measure_pod_loss(bench, cl, system_cls, key)
                except Exception as e:
                    bench.error(f"k8s {system_cls.__name__} pod loss", e)
    finally:
        cl.close()
