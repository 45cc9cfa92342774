"""Shared pieces of the Kubernetes reliability and security tests (issue 5).

Reuses what exists rather than redoing it:

* :mod:`tests.k8s.helpers` — ``make_tenant`` (a namespace with exactly the Role that
  ``kubemagic rbac`` prints, and a kubeconfig acting as that service account), ``leftovers``
  (kubemagic's Jobs, pods and Secrets in a namespace), ``raw``, ``wait_until``;
* :mod:`tests.kernel._kernel` — a real kernel driven over ZMQ; :class:`KubeKernel` only
  adds environment variables (``KUBECONFIG``) for it;
* :mod:`tests.kernel.test_teardown` — ``processes_of(cluster_id)``: controller processes
  found by their ``IPP_CLUSTER_ID`` environment variable.

Every session here runs as the least-privilege service account, never as cluster admin;
the admin client only inspects and disrupts (deletes pods, reads the Secret).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

from jupyter_client.manager import start_new_kernel
from kubernetes import client

from tests.k8s.helpers import Tenant, admin, leftovers, make_tenant, wait_until
from tests.kernel._kernel import Kernel, ensure_kernelspec
from tests.kernel.test_teardown import processes_of

__all__ = [
    "NOTHING", "SELECTOR", "KubeKernel", "Tenant", "admin", "clean_process_env",
    "connection_info", "engine_pods", "kernel_env", "leftovers", "make_tenant",
    "new_session", "pod_index", "processes_of", "secret_values", "seconds_until",
    "session_cell", "session_options", "wait_for", "wait_until",
]

NOTHING = {"jobs": [], "pods": [], "secrets": []}
SELECTOR = "app.kubernetes.io/name=kubemagic"
#: variables a KubeCluster sets in its process; restored after each test so one test's
#: CurveZMQ switch or parent pid never leaks into the next (or into other test packages)
_SESSION_ENV = ("IPP_ENABLE_CURVE", "KUBEMAGIC_PARENT_PID", "KUBEMAGIC_CONTROLLER_ADDRESS")


@contextlib.contextmanager
def clean_process_env() -> Iterator[None]:
    """Run without the session variables, and leave them exactly as found afterwards.

    (``MonkeyPatch.delenv`` records nothing for a variable that is absent, so a session
    setting it inside the block would leak it to later tests: restore by hand.)
    """
    saved = {name: os.environ.pop(name, None) for name in _SESSION_ENV}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def session_options(k8s_cluster: Any, tenant: Tenant, **extra: Any) -> dict[str, Any]:
    """Python-API options of a Kubernetes session in ``tenant`` (least privilege)."""
    return {
        "backend": "kubernetes",
        "image": k8s_cluster.image,
        "namespace": tenant.namespace,
        "controller_address": k8s_cluster.host_ip,
        "kubeconfig": tenant.kubeconfig,
        **extra,
    }


def new_session(k8s_cluster: Any, tenant: Tenant, n: int = 2, **extra: Any) -> Any:
    import kubemagic

    options = session_options(k8s_cluster, tenant, **extra)
    backend = options.pop("backend")
    return kubemagic.KubeCluster(n=n, backend=backend, **options)


def session_cell(k8s_cluster: Any, tenant: Tenant, n: int = 2, name: str = "s",
                 **extra: Any) -> str:
    """Kernel code that starts a session the way a user would (Python API), bound to ``name``."""
    options = session_options(k8s_cluster, tenant, **extra)
    args = ", ".join(f"{k}={v!r}" for k, v in options.items())
    return f"import kubemagic\n{name} = kubemagic.KubeCluster(n={n}, {args}).start()\n"


class KubeKernel(Kernel):
    """:class:`tests.kernel._kernel.Kernel` started with extra environment variables."""

    def __init__(self, env: dict[str, str]) -> None:  # noqa: D107 - see class docstring
        ensure_kernelspec()
        full = {k: v for k, v in os.environ.items() if k not in _SESSION_ENV}
        full.update(env)
        self.km, self.kc = start_new_kernel(kernel_name="python3", env=full)
        self.comms = {}

    def kill_hard(self) -> None:
        """Close channels and free the manager's resources after the process was killed."""
        with contextlib.suppress(Exception):
            self.kc.stop_channels()
        with contextlib.suppress(Exception):
            if self.km.is_alive():
                self.km.shutdown_kernel(now=True)
        with contextlib.suppress(Exception):
            self.km.cleanup_resources()


def kernel_env(k8s_cluster: Any, tenant: Tenant) -> dict[str, str]:
    """The kernel sees the cluster the way a notebook user does: through $KUBECONFIG."""
    return {"KUBECONFIG": tenant.kubeconfig}


def connection_info(k8s_cluster: Any, namespace: str) -> dict[str, Any]:
    """The engine connection info, read (as admin) from the one kubemagic Secret."""
    core, _ = admin(k8s_cluster)
    secrets = core.list_namespaced_secret(namespace, label_selector=SELECTOR).items
    assert len(secrets) == 1, [s.metadata.name for s in secrets]
    return json.loads(base64.b64decode(secrets[0].data["IPP_CONNECTION_INFO"]))


def secret_values(info: dict[str, Any]) -> dict[str, str]:
    """What must never leave the Secret: the HMAC key (ipyparallel blanks it when CurveZMQ
    is on — CurveZMQ replaces message signing) and the CurveZMQ server key, which is then
    the only thing a client needs to submit work."""
    return {k: info[k] for k in ("key", "curve_serverkey") if info.get(k)}


def engine_pods(k8s_cluster: Any, namespace: str, cluster_id: str) -> list[client.V1Pod]:
    core, _ = admin(k8s_cluster)
    return core.list_namespaced_pod(
        namespace, label_selector=f"app.kubernetes.io/instance={cluster_id}").items


def pod_index(pod: client.V1Pod) -> int:
    return int(pod.metadata.annotations["batch.kubernetes.io/job-completion-index"])


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    value = wait_until(predicate, timeout, interval=interval)
    assert value, f"{what}: not within {timeout:.0f} s"
    return value


def seconds_until(predicate: Any, timeout: float, interval: float = 0.1) -> float | None:
    """Seconds until ``predicate()`` is truthy, or None after ``timeout``."""
    t0 = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(interval)
