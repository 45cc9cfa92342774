"""What the Kubernetes engine launcher knows about its Job, without changing it.

A mixin of :class:`.launcher.KubernetesEngineSetLauncher`: the watch that mirrors the Job
and its pods (and tells ipyparallel when the Job ends), the per-slot states the widget
shows, the diagnosis of engines that do not connect and the engines' logs. Everything that
creates, changes or deletes objects stays in the launcher.
"""

from __future__ import annotations

import asyncio
from textwrap import indent
from typing import Any, Callable

from . import manifests
from .client import Api, api_call, namespaced
from .diagnose import explain, refusal
from .podstate import pod_state, slot_states
from .watch import JobMirror

#: At most this many pods are asked for events/logs by :meth:`diagnose` (it must stay fast
#: with 100 identical Pending pods).
_DIAGNOSE_PODS = 5


class JobObserver:
    """Watch, states, diagnosis and logs of the launcher's Job (see the module doc)."""

    # provided by the launcher (traits, ipyparallel's BaseLauncher, its API property)
    api: Api
    namespace: str
    job_name: str
    controller_url: str
    n: int
    state: str
    output_limit: int
    loop: Any
    notify_stop: Callable[[dict[str, Any]], Any]

    _mirror: JobMirror | None = None
    _stopping = False

    def _watch(self) -> None:
        self._mirror = JobMirror(self.api, self.namespace, self.job_name, self._job_changed)
        self._mirror.start()

    def _job_changed(self, job: dict[str, Any] | None) -> None:
        """Watch thread: the Job changed or vanished. A failed, completed or deleted Job
        means the engines are gone: tell ipyparallel (on its loop) unless we are stopping."""
        if self._stopping or self.state != "running":
            return
        stop_data: dict[str, Any] | None = None
        if job is None:
            stop_data = {"exit_code": 1, "reason": f"Job {self.job_name} was deleted"}
        else:
            for cond in (job.get("status") or {}).get("conditions") or []:
                if cond.get("status") != "True":
                    continue
                if cond.get("type") == "Failed":
                    stop_data = {
                        "exit_code": self._failure_exit_code(),
                        "reason": f"{cond.get('reason')}: {cond.get('message')}",
                    }
                elif cond.get("type") == "Complete":
                    stop_data = {"exit_code": 0, "reason": "all engines exited"}
        if stop_data is not None:
            stop_data["identifier"] = self.job_name
            try:
                self.loop.add_callback(self.notify_stop, stop_data)
            except RuntimeError:  # that loop is closed (a finished *_sync call): tell now
                self.notify_stop(stop_data)

    def _failure_exit_code(self) -> int:
        """The exit code of the newest failed engine (17 when the controller was lost)."""
        assert self._mirror is not None
        codes = [
            (s.created, s.exit_code)
            for s in map(pod_state, self._mirror.pods_with_history())
            if s.phase == "Failed" and s.exit_code is not None
        ]
        return max(codes)[1] if codes else 1

    def get_output(self, remove: bool = False) -> str:
        """Log tails of the engine pods (live ones from the API, gone ones from their
        termination messages). ``remove`` is accepted for API compatibility: there is
        no local file to remove."""
        if self._mirror is None:
            return ""
        parts = []
        live = {p["metadata"]["name"] for p in self._mirror.pods()}
        for pod in sorted(self._mirror.pods_with_history(), key=lambda p: p["metadata"]["name"]):
            state = pod_state(pod)
            text = (
                self._pod_log(state.name)
                if state.name in live and self.state == "running"
                else state.message
            )
            if text:
                parts.append(f"Output for engine {state.index} (pod {state.name})")
                parts.append(indent("".join(text.splitlines(True)[-self.output_limit :]), "  "))
        return "\n".join(parts)

    def _pod_log(self, pod: str, lines: int | None = None) -> str:
        try:
            with api_call("get", "pods/log", self.namespace):
                response = self.api.request(
                    "GET",
                    namespaced(self.namespace, "pods", f"{pod}/log"),
                    query={
                        "container": manifests.ENGINE_CONTAINER,
                        "tailLines": lines or self.output_limit,
                    },
                    raw=True,
                )
            return bytes(response.data).decode("utf8", "replace")
        except Exception:
            return ""  # no container yet, pod gone, or logs not readable: nothing to show

    def engine_states(self) -> list[dict[str, Any]]:
        """One dict per slot (index, name, phase, reason, message, exit_code, node, created),
        from the watch mirror: no I/O."""
        if self._mirror is None:
            return []
        return [s.as_dict() for s in slot_states(self._mirror.pods(), self.n)]

    async def diagnose(self) -> str:
        """Explain what keeps engines from connecting (see :func:`.diagnose.explain`)."""
        if self._mirror is None:
            return "the engine Job was never created"
        return await asyncio.to_thread(self._diagnose)

    async def refusal(self, since: float) -> str | None:
        """Why the API refuses to create engine pods since ``since`` (a quota, an admission
        policy), quoted from the Job's events; None when nothing refuses them."""
        if self._mirror is None:
            return None
        events = await asyncio.to_thread(self._events, self.job_name)
        return refusal(events, since)

    def _diagnose(self) -> str:
        assert self._mirror is not None
        pods = self._mirror.pods_with_history()
        slots = slot_states(self._mirror.pods(), self.n)
        troubled = [s.name for s in slots if s.name and s.phase != "Running"][:_DIAGNOSE_PODS]
        running = [s.name for s in slots if s.phase == "Running"][:_DIAGNOSE_PODS]
        notes = []
        events: dict[str, list[dict[str, Any]]] = {}
        for name in [self.job_name, *troubled]:
            try:
                events[name] = self._events(name)
            except Exception as e:
                notes.append(f"  (events of {name} unavailable: {e})")
                break
        logs = {name: self._pod_log(name, lines=40) for name in running}
        text = explain(
            job_name=self.job_name,
            namespace=self.namespace,
            n=self.n,
            job=self._mirror.job(),
            pods=pods,
            events=events,
            logs=logs,
            controller_url=self.controller_url,
        )
        if self._mirror.error:
            notes.append(f"  ({self._mirror.error})")
        return "\n".join([text, *notes])

    def _events(self, name: str) -> list[dict[str, Any]]:
        with api_call("list", "events", self.namespace):
            return self.api.request(
                "GET",
                namespaced(self.namespace, "events"),
                query={"fieldSelector": f"involvedObject.name={name}"},
            )["items"]
