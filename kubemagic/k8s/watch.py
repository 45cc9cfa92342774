"""An in-memory mirror of one engine Job and its pods, kept current by API watches.

The widget asks for engine states many times a second and must never block on the
network; the launcher must notice at once when the Job fails (its controller died) or
vanishes. Two daemon threads — one watch on the Job, one on its pods — keep plain
dicts under a lock; readers copy them. Threads, not asyncio tasks, because the launcher
is driven from whatever event loop (or none) ipyparallel's sync wrappers use.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from kubernetes.client.exceptions import ApiException

from .client import Api, api_message, namespaced
from .manifests import JOB_NAME_LABEL

log = logging.getLogger(__name__)

#: Server-side lifetime of one watch request; the thread re-watches after it (and checks
#: whether it should stop), so a stopped mirror lets go of its connection within this.
WATCH_SECONDS = 20
#: Pods that no longer exist are remembered (last state) for diagnostics, up to this many.
GONE_PODS_KEPT = 64


class JobMirror:
    """Mirror of Job ``job_name`` and its pods in ``namespace``.

    ``on_job_change(job_or_None)`` runs on a watch thread whenever the Job changes or is
    deleted (None); ``on_pod_change(pod)`` whenever a pod is listed, created or changes, and
    for every pod again after each watch request (at most :data:`WATCH_SECONDS` apart), so
    what changes with the clock alone (a deletion deadline passing) is seen without an event.
    """

    def __init__(
        self,
        api: Api,
        namespace: str,
        job_name: str,
        on_job_change: Callable[[dict[str, Any] | None], None] | None = None,
        on_pod_change: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self._api = api
        self.namespace = namespace
        self.job_name = job_name
        self._on_job_change = on_job_change
        self._on_pod_change = on_pod_change
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pods: dict[str, dict[str, Any]] = {}
        self._gone: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._job: dict[str, Any] | None = None
        #: the last watch failure in words (e.g. a 403 on watch), for diagnostics
        self.error: str = ""
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start both watch threads (idempotent)."""
        if self._threads:
            return
        self._threads = [
            threading.Thread(
                target=self._run,
                args=(
                    namespaced(self.namespace, "jobs", group="batch/v1"),
                    {"fieldSelector": f"metadata.name={self.job_name}"},
                    self._apply_job,
                    self._replace_job,
                ),
                name=f"kubemagic-watch-job-{self.job_name}",
                daemon=True,
            ),
            threading.Thread(
                target=self._run,
                args=(
                    namespaced(self.namespace, "pods"),
                    {"labelSelector": f"{JOB_NAME_LABEL}={self.job_name}"},
                    self._apply_pod,
                    self._replace_pods,
                ),
                name=f"kubemagic-watch-pods-{self.job_name}",
                daemon=True,
            ),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Ask the threads to finish; they exit when their current watch request ends."""
        self._stop.set()

    # -- readers (cheap, thread-safe copies) -------------------------------------------

    def pods(self) -> list[dict[str, Any]]:
        """The Job's existing pods (API dicts)."""
        with self._lock:
            return list(self._pods.values())

    def pods_with_history(self) -> list[dict[str, Any]]:
        """Existing pods plus the last state of recently deleted ones."""
        with self._lock:
            return list(self._gone.values()) + list(self._pods.values())

    def job(self) -> dict[str, Any] | None:
        """The Job as last seen, or None (not seen yet, or deleted)."""
        with self._lock:
            return self._job

    # -- watch machinery ------------------------------------------------------------------

    def _apply_job(self, kind: str, job: dict[str, Any] | None) -> None:
        with self._lock:
            self._job = None if kind == "DELETED" else job
            current = self._job
        if self._on_job_change is not None:
            self._on_job_change(current)

    def _apply_pod(self, kind: str, pod: dict[str, Any] | None) -> None:
        if pod is None:
            return
        name = pod["metadata"]["name"]
        with self._lock:
            if kind == "DELETED":
                self._pods.pop(name, None)
                self._gone[name] = pod
                while len(self._gone) > GONE_PODS_KEPT:
                    self._gone.popitem(last=False)
            else:
                self._pods[name] = pod
        if kind != "DELETED" and self._on_pod_change is not None:
            self._on_pod_change(pod)

    def _replace_job(self, items: list[dict[str, Any]]) -> None:
        self._apply_job("ADDED" if items else "DELETED", items[0] if items else None)

    def _replace_pods(self, items: list[dict[str, Any]]) -> None:
        names = {item["metadata"]["name"] for item in items}
        with self._lock:
            stale = [pod for name, pod in self._pods.items() if name not in names]
        for pod in stale:
            self._apply_pod("DELETED", pod)
        for item in items:
            self._apply_pod("ADDED", item)

    def _run(
        self,
        path: str,
        selector: dict[str, str],
        apply: Callable[[str, dict[str, Any] | None], None],
        replace: Callable[[list[dict[str, Any]]], None],
    ) -> None:
        """List, then watch from the list's resourceVersion; re-list after 410 Gone."""
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    listed = self._api.request("GET", path, query=selector)
                    replace(listed.get("items") or [])
                    version = listed["metadata"]["resourceVersion"]
                query = {**selector, "resourceVersion": version, "allowWatchBookmarks": "true"}
                for event in self._api.watch(path, query, WATCH_SECONDS):
                    obj = event.get("object") or {}
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                        apply(event["type"], obj)
                    if self._stop.is_set():
                        return
                self.error = ""
                if apply == self._apply_pod and self._on_pod_change is not None:
                    for pod in self.pods():
                        self._on_pod_change(pod)
            except ApiException as e:
                if e.status == 410:  # our resourceVersion is too old: start over
                    version = None
                    continue
                self.error = f"watching {self.job_name} failed: {e.status} {api_message(e)}"
                log.debug(self.error)
                self._stop.wait(5 if e.status == 403 else 1)
            except Exception as e:  # network trouble: retry, never kill the thread
                self.error = f"watching {self.job_name} failed: {e!r}"
                log.debug(self.error)
                self._stop.wait(1)
