"""``KubernetesEngineSetLauncher``: ipyparallel engines as the pods of one Indexed Job.

Registered as the ``kubernetes`` entry point of ``ipyparallel.engine_launchers``, so plain
ipyparallel works too::

    ipp.Cluster(engines="kubernetes", controller_ip="0.0.0.0",
                controller_location="<address pods can reach>", n=4)

Slot ``i`` is completion index ``i``; its engine sees it as ``$KUBEMAGIC_ENGINE_INDEX``.
Scaling patches ``parallelism`` and ``completions`` together (scaling down removes the
highest indices). The engine connection info (HMAC key, CurveZMQ server key) lives only
in a Secret owned by the Job. Only this module creates, changes or deletes engine
objects in the cluster (and its :mod:`.engine_control` mixin, which deletes the pod of a
stuck engine); building them is :mod:`.manifests`' job.

Every API call is blocking (the official client) and runs in a worker thread, so the
event loop driving the launcher never stalls on the network.

It behaves as ipyparallel's own launchers do where ipyparallel's tests look (they run
against it: ``tests/k8s/test_ipp_launcher_suite.py``): SIGTERM and SIGKILL end the engine
set, other signals reach the engine processes, engines that cannot start end it too, the
output stays readable after :meth:`stop`, and the cluster file follows :meth:`scale`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal as signals
import time
from typing import Any

from ipyparallel.cluster.launcher import (
    EngineLauncher,
    LauncherError,
    NotRunning,
    ProcessStateError,
)

from ..backends.options import layer_values
from ..errors import SessionError, UsageError
from . import incluster, manifests, relay
from .client import (MERGE_PATCH, Api, api_call, connect, is_not_found, namespaced,
                     through_outage)
from .connection import engine_connection
from .engine_control import EngineControl
from .jobview import JobObserver
from .lease import Lease, seconds_since
from .launcher_config import LauncherConfig
from .options import KubernetesOptions
from .podstate import job_end, pod_state

#: Seconds :meth:`KubernetesEngineSetLauncher.signal` waits for engines to confirm a signal.
_SIGNAL_TIMEOUT = 5.0


class KubernetesEngineSetLauncher(JobObserver, EngineControl, LauncherConfig, EngineLauncher):
    """Launch ``n`` ipyparallel engines as an Indexed Kubernetes Job, and resize it.

    Its configuration (one trait per engine option, see :mod:`.launcher_config`), what
    it observes of the Job (:mod:`.jobview`) and its control of single engines
    (:mod:`.engine_control`) live in its base classes.
    """

    entrypoint_name = "kubernetes"

    _api: Api | None = None
    _lease: Lease | None = None

    def find_args(self) -> list[str]:
        return list(self.engine_cmd) + list(self.engine_args)

    @property
    def api(self) -> Api:
        """The API connection (created on first use, from kubeconfig/context or in-cluster)."""
        if self._api is None:
            self._api = connect(self.kubeconfig or None, self.context or None)
        return self._api

    @api.setter
    def api(self, api: Api) -> None:
        self._api = api

    # -- start ----------------------------------------------------------------------------

    async def start(self, n: int) -> dict[str, str]:
        """Create the Secret and the Job for slots ``0..n-1``; return once created.

        Engines register with the controller later; :meth:`engine_states` and
        :meth:`diagnose` tell how far they are.
        """
        if self.state != "before":
            raise ProcessStateError(f"engine Job already started (state {self.state})")
        if n < 1:
            raise UsageError(f"cannot start {n} engines", fix="start at least one engine")
        _ = self.loop  # bind notify_stop's loop now, on the caller's thread, not a watch thread
        options = self.options()
        connection, self.controller_url = await asyncio.to_thread(
            engine_connection, self.environment, self.connection_files.get("engine", ""))
        self.n = n
        self.job_name = manifests.job_name(self.cluster_id, self.engine_set_id)
        created = time.monotonic()
        await asyncio.to_thread(self._create, options, connection)
        self._renew(options, created)
        if self.startup_crash_window > 0:
            self._started = time.monotonic()
        self._watch()
        return self.notify_start({"job": self.job_name, "namespace": self.namespace})

    def _pod_env(self) -> dict[str, str]:
        """Environment of the engine containers, without what must not be a literal.

        The connection info goes into the Secret; ``IPP_PROFILE_DIR`` is a path on the
        kernel's machine, meaningless (and unwritable) in a pod.
        """
        env = self.get_env()
        for name in ("IPP_CONNECTION_INFO", "IPP_PROFILE_DIR"):
            env.pop(name, None)
        return {k: str(v) for k, v in env.items()}

    def _owner(self) -> dict[str, Any] | None:
        """ownerReference to the kernel's pod — only within the same namespace: a
        cross-namespace owner counts as absent, and the garbage collector would delete
        the Job at once."""
        if not self.owner_reference_to_kernel_pod or incluster.pod_namespace() != self.namespace:
            return None
        name, uid = incluster.pod_name(), incluster.pod_uid()
        if not uid:
            pod = incluster.own_pod(self.api) or {}
            uid = (pod.get("metadata") or {}).get("uid")
        if not name or not uid:
            return None
        return manifests.owner_reference("v1", "Pod", name, uid)

    def resolve_image(self, options: KubernetesOptions) -> str:
        """The engine image: configured, else the notebook's own (:func:`.incluster.own_image`)."""
        image = options.image or incluster.own_image(self.api)
        if not image:
            raise UsageError(
                "no engine image: the kernel is not in a JupyterHub pod ($JUPYTER_IMAGE_SPEC "
                "is unset) and its own pod's image is unknown",
                fix="pass --image <an image with kubemagic and your libraries installed> "
                "(KubernetesEngineSetLauncher.image for plain ipyparallel)",
            )
        return image

    def job_manifest(
        self, options: KubernetesOptions, image: str, owner: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The Job for :attr:`n` slots, as :func:`.manifests.engine_job` builds it from this
        launcher's configuration."""
        return manifests.engine_job(
            name=self.job_name,
            namespace=self.namespace,
            labels=self._labels(),
            image=image,
            command=list(self.engine_cmd),
            args=list(self.engine_args),
            n=self.n,
            secret_name=self.job_name,
            env=self._pod_env(),
            backoff_limit_per_index=self.backoff_limit_per_index,
            owner=owner,
            **layer_values(options, "manifest"),
        )

    def _labels(self) -> dict[str, str]:
        return manifests.engine_labels(self.cluster_id, incluster.owner_user(), self.engine_set_id)

    def _create(self, options: KubernetesOptions, connection: str) -> None:
        """Create Secret → Job → make the Job own the Secret. On any failure, delete what was
        created: a failed start leaves nothing behind."""
        ns, name = self.namespace, self.job_name
        job = self.job_manifest(options, self.resolve_image(options), self._owner())
        secret = manifests.connection_secret(name, ns, self._labels(), connection)
        api = self.api
        with api_call("create", "secrets", ns):
            api.request("POST", namespaced(ns, "secrets"), body=secret)
        try:
            with api_call("create", "jobs.batch", ns):
                created = api.request(
                    "POST", self._jobs(), query={"fieldValidation": "Strict"}, body=job
                )
            self.job_uid = created["metadata"]["uid"]
            with api_call("patch", "secrets", ns):
                api.request(
                    "PATCH",
                    namespaced(ns, "secrets", name),
                    body=manifests.secret_owner_patch(name, self.job_uid),
                    content_type=MERGE_PATCH,
                )
        except BaseException:
            with contextlib.suppress(Exception):  # the first error is the one to report
                self._delete_objects(wait=False)
            raise

    def _renew(self, options: KubernetesOptions, started: float) -> None:
        """Keep the Job's lease (:mod:`.lease`) while this launcher lives."""
        self._lease = Lease(
            lambda body: self.api.request("PATCH", self._jobs(self.job_name), body=body,
                                          content_type=MERGE_PATCH),
            options.lease_seconds, options.active_deadline_seconds, started, is_not_found)
        self._lease.start(self.job_name)

    def _jobs(self, name: str = "") -> str:
        return namespaced(self.namespace, "jobs", name, group="batch/v1")

    # -- stop -----------------------------------------------------------------------------

    async def stop(self) -> dict[str, Any]:
        """Keep the engines' last log lines (:meth:`get_output` shows them afterwards), delete
        the Job (foreground: its pods first) and the Secret; return when no pod and no Job
        is left, or raise ``TimeoutError`` after ``stop_timeout`` seconds."""
        self._stopping = True
        try:
            if self.job_name:
                try:
                    if self._mirror is not None:
                        pods = [p["metadata"]["name"] for p in self._mirror.pods()]
                        await asyncio.to_thread(self._keep_logs, pods)
                    await asyncio.to_thread(self._delete_objects, wait=True)
                except RuntimeError as e:
                    # interpreter shutdown (atexit): no new threads; delete inline instead
                    if "cannot schedule new futures" not in str(e):
                        raise
                    self._delete_objects(wait=True)
        finally:
            if self._mirror is not None:
                self._mirror.stop()
            if self._lease is not None:
                self._lease.stop()
        data = {"exit_code": 0, "reason": "stopped", "identifier": self.job_name}
        self.notify_stop(data)
        return data

    def _delete_objects(self, *, wait: bool, kill: list[str] | None = None) -> None:
        """Delete Job and Secret (404 is success), and the pods in ``kill`` without a grace
        period (SIGKILL); with ``wait``, until pods and Job are gone."""
        ns, name = self.namespace, self.job_name
        for resource, path, query in (
            ("jobs.batch", self._jobs(name), {"propagationPolicy": "Foreground"}),
            ("secrets", namespaced(ns, "secrets", name), None),
            *(("pods", namespaced(ns, "pods", p), {"gracePeriodSeconds": 0}) for p in kill or []),
        ):
            try:
                with api_call("delete", resource, ns):
                    through_outage(lambda p=path, q=query: self.api.request("DELETE", p, query=q),
                                   f"deleting the engines' {resource}")
            except Exception as e:
                if not is_not_found(e):
                    raise
        if not wait:
            return
        deadline = time.monotonic() + self.stop_timeout
        while True:
            left = self._remaining_objects()
            if not left:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"engine Job {name} still has {left} in namespace {ns} after "
                    f"{self.stop_timeout} s"
                )
            time.sleep(0.2)

    def _job_pods(self) -> list[dict[str, Any]]:
        """The Job's pods as the API lists them now (a new watch may not have yet)."""
        with api_call("list", "pods", self.namespace):
            return self.api.request(
                "GET",
                namespaced(self.namespace, "pods"),
                query={"labelSelector": f"{manifests.JOB_NAME_LABEL}={self.job_name}"},
            )["items"]

    def _remaining_objects(self) -> str:
        """ "" when the Job and all its pods are gone, else what is left (for the timeout)."""
        pods = self._job_pods()
        if pods:
            return f"{len(pods)} pod(s)"
        try:
            with api_call("get", "jobs.batch", self.namespace):
                self.api.request("GET", self._jobs(self.job_name))
        except Exception as e:
            if is_not_found(e):
                return ""
            raise
        return "the Job"

    # -- ipyparallel's launcher API ----------------------------------------------------

    def poll(self) -> int | None:
        """None while the engines' Job is running, else the exit code ipyparallel recorded."""
        if self.state == "running":
            return None
        return (self.stop_data or {}).get("exit_code", 0)

    async def signal(self, sig: int | str) -> None:
        """Signal the engine processes, as ipyparallel's other launchers do.

        SIGTERM and SIGKILL end the engine set: the Job is deleted (with SIGKILL, its pods
        at once), the engines get that signal from the kubelet, and once the Job is gone
        the set stops with exit code ``-sig``. Any other signal reaches every running engine
        process through the controller (:mod:`.relay`): SIGINT interrupts its task, and a
        handler the engine registered runs. Engines not registered yet miss it (logged).
        """
        number = signals.Signals(getattr(signals, sig) if isinstance(sig, str) else sig)
        if self.state == "running":
            await asyncio.to_thread(self._signal, number)

    def _signal(self, sig: signals.Signals) -> None:
        # the API's list, not the watch's: a launcher just reattached may not have listed yet
        pods = [s.name for s in map(pod_state, self._job_pods()) if s.phase == "Running"]
        if sig in (signals.SIGTERM, signals.SIGKILL):
            # the kubelet sends SIGTERM, then SIGKILL after the grace period (none: SIGKILL)
            self._signalled = sig
            self._keep_logs(pods)
            self._delete_objects(wait=False, kill=pods if sig == signals.SIGKILL else [])
            return
        refused, silent = relay.send_signal(
            self.connection_files["client"], pods, sig, _SIGNAL_TIMEOUT
        )
        if refused:
            raise LauncherError(f"engines refused {sig.name}: {refused}")
        if silent:
            self.log.warning("%s reached no engine in pods %s (not registered?)", sig.name, silent)

    @classmethod
    def from_dict(cls, d: dict[str, Any], **kwargs: Any) -> KubernetesEngineSetLauncher:
        """Reattach to a running engine Job (e.g. ``ipcluster`` or a new kernel reading the
        cluster file); raises ``NotRunning`` when the Job is gone or has failed."""
        self = super().from_dict(d, **kwargs)
        if not self.job_name:
            raise NotRunning("no engine Job recorded")
        try:
            with api_call("get", "jobs.batch", self.namespace):
                job = self.api.request("GET", self._jobs(self.job_name))
        except Exception as e:
            if is_not_found(e):
                raise NotRunning(f"engine Job {self.job_name} is gone") from None
            raise
        if (end := job_end(job)) is not None:
            raise NotRunning(f"engine Job {self.job_name} has finished: {end.reason}")
        _ = self.loop  # as in start(): bind the loop on this thread
        self._watch()
        started = (job.get("status") or {}).get("startTime") or job["metadata"]["creationTimestamp"]
        self._renew(self.options(), time.monotonic() - seconds_since(started))
        return self

    # -- kubemagic's ScalableEngineLauncher protocol -------------------------------------

    async def scale(self, n: int) -> None:
        """Resize to slots ``0..n-1``: new indices get pods, indices ``>= n`` are deleted by
        the Job controller. ``0`` keeps the Job with no pods (its lease runs on)."""
        if n < 0:
            raise UsageError(f"cannot scale to {n} engines", fix="give a number >= 0")
        if self.state != "running":
            raise SessionError(
                f"cannot scale: the engine Job is not running (state {self.state})",
                fix="start the engines again",
            )
        try:
            with api_call("patch", "jobs.batch", self.namespace):
                await asyncio.to_thread(
                    through_outage,
                    lambda: self.api.request("PATCH", self._jobs(self.job_name),
                                             body=manifests.scale_patch(n),
                                             content_type=MERGE_PATCH),
                    f"scaling to {n} engines",
                )
        except Exception as e:
            if is_not_found(e):
                raise SessionError(
                    f"cannot scale: engine Job {self.job_name} no longer exists (it failed or "
                    "was deleted)",
                    fix="restart the session's engines",
                ) from None
            raise
        self.n = n
        # the cluster file records n: `ipcluster` and a kernel that reattaches read it
        update_cluster_file = getattr(self.parent, "update_cluster_file", None)
        if update_cluster_file is not None:
            update_cluster_file()

