"""One engine pod at a time: interrupt its task, or replace it.

A mixin of :class:`.launcher.KubernetesEngineSetLauncher`, for
:mod:`kubemagic.recovery`: an engine still running an ended map's item is interrupted
(SIGINT, through the controller: :mod:`.relay`, no ``pods/exec``), and one that does not
stop is killed by deleting its pod without a grace period, as is the pod of an engine the
controller dropped while it still runs (:meth:`EngineControl.reap_engine`, for
:mod:`kubemagic.reaper`). The Job then creates a new pod for the slot: the
podFailurePolicy counts the kill (exit 137) against the slot's generous
``backoffLimitPerIndex``, so the Job does not fail, and the replacement comes after the
slot's per-index backoff (10 s for a slot's first loss on Kubernetes 1.31).

It also releases the pods of a lost node (:meth:`EngineControl.release_lost_pod`): marked
Failed and deleted, as the pod garbage collector does once a Node object is deleted, so the
Job replaces them on the nodes that still answer instead of waiting for that deletion. With
the kills, these are the only changes it makes to the cluster next to the launcher's own.
"""

from __future__ import annotations

import signal
from typing import Any

from . import relay
from .client import MERGE_PATCH, Api, api_call, is_not_found, namespaced
from .podstate import runs
from .watch import JobMirror

#: seconds to wait for an engine to confirm a signal
SIGNAL_TIMEOUT_S = 2.0
#: the status of a pod lost with its node: Failed, keeping its ``DisruptionTarget``
#: condition (the Job's podFailurePolicy ignores it: replaced, not counted)
LOST_POD_STATUS = {"status": {
    "phase": "Failed", "reason": "NodeLost",
    "message": "kubemagic: the pod's node stopped answering and the taint manager is deleting "
               "the pod; marked Failed so that its Job replaces it on a node that answers",
}}


class EngineControl:
    """Signal or replace single engine pods (see the module doc)."""

    # provided by the launcher (traits, ipyparallel's BaseLauncher, its API property)
    api: Api
    namespace: str
    connection_files: dict[str, str]
    log: Any
    _mirror: JobMirror | None

    def signal_engine(self, engine: Any, sig: int) -> bool:
        """Send ``sig`` to the engine process of ``engine``'s pod (its identity with the
        controller is the pod's name); SIGKILL deletes the pod at once instead. True when
        the engine confirmed the signal, or the pod was deleted."""
        pod = engine.ident
        if not pod:
            return False
        if sig == signal.SIGKILL:
            try:
                with api_call("delete", "pods", self.namespace):
                    self.api.request("DELETE", namespaced(self.namespace, "pods", pod),
                                     query={"gracePeriodSeconds": 0})
            except Exception as e:
                if is_not_found(e):
                    return False  # gone already
                raise
            return True
        refused, silent = relay.send_signal(self.connection_files["client"], [pod], sig,
                                            SIGNAL_TIMEOUT_S)
        if refused or silent:
            self.log.warning("%s did not reach the engine of pod %s: %s",
                             signal.Signals(sig).name, pod, refused.get(pod, "no answer"))
        return not refused and not silent

    def reap_engine(self, engine: Any) -> bool:
        """Delete the pod of ``engine``, which the controller dropped, if the pod still runs
        (:mod:`kubemagic.reaper`); True if it did. A pod that ended, is being deleted, or
        whose node went silent is left to the Job and :meth:`release_lost_pod`."""
        pods = self._mirror.pods() if self._mirror is not None else []
        pod = next((p for p in pods if p["metadata"]["name"] == engine.ident), None)
        return pod is not None and runs(pod) and self.signal_engine(engine, signal.SIGKILL)

    def release_lost_pod(self, pod: str) -> None:
        """Mark ``pod``, lost with its node (:func:`.podstate.lost_with_node`), Failed and
        delete it without a grace period: what the pod garbage collector does once the Node
        object is gone, done now because a cloud may take minutes to delete it, a bare-metal
        cluster never. Its engine is already gone (no heartbeat): nothing is cut short. If
        the node comes back, its kubelet finds the pod deleted and kills the container."""
        path = namespaced(self.namespace, "pods", pod)
        try:
            with api_call("patch", "pods/status", self.namespace):
                self.api.request("PATCH", f"{path}/status", body=LOST_POD_STATUS,
                                 content_type=MERGE_PATCH)
            with api_call("delete", "pods", self.namespace):
                self.api.request("DELETE", path, query={"gracePeriodSeconds": 0})
        except Exception as e:
            if not is_not_found(e):
                self.log.warning("could not release engine pod %s of a lost node (its slot "
                                 "stays empty until the Node is deleted): %s", pod, e)
            return
        self.log.info("engine pod %s was on a lost node: marked Failed, to be replaced", pod)
