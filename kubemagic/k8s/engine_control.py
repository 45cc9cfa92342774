"""One engine pod at a time: interrupt its task, or replace it.

A mixin of :class:`.launcher.KubernetesEngineSetLauncher`, for
:mod:`kubemagic.recovery`: an engine still running an ended map's item is interrupted
(SIGINT, through the controller: :mod:`.relay`, no ``pods/exec``), and one that does not
stop is killed by deleting its pod without a grace period — the only change this makes to
the cluster, next to the launcher's own. The Job then creates a new pod for the slot: the
podFailurePolicy counts the kill (exit 137) against the slot's generous
``backoffLimitPerIndex``, so the Job does not fail, and the replacement comes after the
slot's per-index backoff (10 s for a slot's first loss on Kubernetes 1.31).
"""

from __future__ import annotations

import signal
from typing import Any

from . import relay
from .client import Api, api_call, is_not_found, namespaced

#: seconds to wait for an engine to confirm a signal
SIGNAL_TIMEOUT_S = 2.0


class EngineControl:
    """Signal or replace single engine pods (see the module doc)."""

    # provided by the launcher (traits, ipyparallel's BaseLauncher, its API property)
    api: Api
    namespace: str
    connection_files: dict[str, str]
    log: Any

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
