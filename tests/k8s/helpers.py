"""Shared pieces of the real-cluster tests of the Kubernetes backend.

Every scenario runs the backend as a ServiceAccount bound to exactly the Role that
``kubemagic rbac`` prints — never as cluster admin; the admin client only sets the stage
(namespaces, node capacity) and inspects what the backend left behind.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import ipyparallel as ipp
from kubernetes import client
from traitlets.config import Config

from kubemagic.k8s.ports import free_port_window
from kubemagic.k8s.options import DEFAULT_PORT_RANGE, parse_port_range
from kubemagic.k8s.rbac import render_rbac

T = TypeVar("T")

#: Heartbeat settings of these tests: fast registration and quick controller-loss detection.
HEARTBEAT_MS = 500
ENGINE_HEARTBEAT_MISSES = 5


class LoopThread:
    """One asyncio loop in a thread for a test: the launcher's async API runs there while
    the test thread uses the (blocking) ipyparallel client, as a notebook would."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[T], timeout: float = 300) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class Tenant:
    """A namespace with kubemagic's least-privilege RBAC, and a kubeconfig acting as it."""

    namespace: str
    kubeconfig: str
    service_account: str = "kubemagic"


def kubectl_apply(k8s_cluster: Any, yaml_text: str) -> None:
    subprocess.run(
        [k8s_cluster.kubectl, "--kubeconfig", k8s_cluster.kubeconfig, "apply", "-f", "-"],
        input=yaml_text,
        text=True,
        check=True,
        capture_output=True,
        timeout=60,
    )


def make_tenant(k8s_cluster: Any, prefix: str) -> Tenant:
    """Namespace + ``kubemagic rbac`` output applied + a kubeconfig for the service account."""
    ns = k8s_cluster.create_namespace(prefix)
    kubectl_apply(k8s_cluster, render_rbac(ns, "kubemagic"))
    kubeconfig = k8s_cluster.service_account_kubeconfig(ns, "kubemagic")
    _wait_for_rbac(kubeconfig, ns)
    return Tenant(ns, kubeconfig)


def _wait_for_rbac(kubeconfig: str, ns: str, timeout: float = 30) -> None:
    from kubernetes import config

    api = config.new_client_from_config(config_file=kubeconfig)
    try:
        batch = client.BatchV1Api(api)
        deadline = time.monotonic() + timeout
        while True:
            try:
                batch.list_namespaced_job(ns)
                return
            except client.ApiException as e:
                if e.status != 403 or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        api.close()


def launcher_config(tenant: Tenant, image: str, **extra: Any) -> Config:
    return Config(
        {
            "KubernetesEngineSetLauncher": {
                "namespace": tenant.namespace,
                "kubeconfig": tenant.kubeconfig,
                "image": image,
                "engine_args": [f"--IPEngine.max_heartbeat_misses={ENGINE_HEARTBEAT_MISSES}"],
                **extra,
            }
        }
    )


def new_cluster(
    k8s_cluster: Any, tenant: Tenant, tmp_path: Path, heartbeat_ms: int = HEARTBEAT_MS, **extra: Any
) -> ipp.Cluster:
    """A plain ``ipp.Cluster(engines="kubernetes")`` with the controller beside the test;
    ``extra`` configures the launcher."""
    ports = free_port_window(*parse_port_range(DEFAULT_PORT_RANGE))
    return ipp.Cluster(
        engines="kubernetes",
        controller_ip="0.0.0.0",
        controller_location=extra.pop("controller_location", k8s_cluster.host_ip),
        controller_args=[
            "--IPController.use_threads=True",
            f"--HeartMonitor.period={heartbeat_ms}",
            f"--IPController.ports={ports[0]}-{ports[-1]}",
        ],
        profile_dir=str(tmp_path / "profile"),
        shutdown_atexit=False,
        config=launcher_config(tenant, extra.pop("image", k8s_cluster.image), **extra),
    )


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """The first truthy ``predicate()`` within ``timeout`` seconds, else the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def admin(k8s_cluster: Any) -> tuple[client.CoreV1Api, client.BatchV1Api]:
    return client.CoreV1Api(k8s_cluster.api), client.BatchV1Api(k8s_cluster.api)


def leftovers(k8s_cluster: Any, ns: str) -> dict[str, list[str]]:
    """kubemagic's objects still in ``ns`` (admin view)."""
    core, batch = admin(k8s_cluster)
    selector = "app.kubernetes.io/name=kubemagic"
    return {
        "jobs": [
            j.metadata.name for j in batch.list_namespaced_job(ns, label_selector=selector).items
        ],
        "pods": [
            p.metadata.name for p in core.list_namespaced_pod(ns, label_selector=selector).items
        ],
        "secrets": [
            s.metadata.name for s in core.list_namespaced_secret(ns, label_selector=selector).items
        ],
    }


def raw(api_obj: Any, k8s_cluster: Any) -> str:
    """An API object as the JSON the server holds (for grepping secrets out of it)."""
    return json.dumps(k8s_cluster.api.sanitize_for_serialization(api_obj))


@contextmanager
def started(cluster: ipp.Cluster, loop: LoopThread, n: int) -> Iterator[ipp.Client]:
    """Start controller and ``n`` engines; always stop everything afterwards."""
    try:
        loop.run(cluster.start_controller())
        loop.run(cluster.start_engines(n))
        rc = loop.run(cluster.connect_client())
        try:
            yield rc
        finally:
            rc.close()
    finally:
        loop.run(cluster.stop_cluster(), timeout=180)


def engine_set(cluster: ipp.Cluster) -> Any:
    return next(iter(cluster.engines.values()))
