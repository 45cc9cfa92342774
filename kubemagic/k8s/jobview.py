"""What the Kubernetes engine launcher knows about its Job, without changing it.

A mixin of :class:`.launcher.KubernetesEngineSetLauncher`: the watch that mirrors the Job
and its pods (and tells ipyparallel when the Job ends, or when its engines crash at
start-up), the per-slot states the widget shows, the diagnosis of engines that do not
connect and the engines' logs. Everything that creates, changes or deletes objects stays
in the launcher.
"""

from __future__ import annotations

import asyncio
import signal as signals
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from textwrap import indent
from typing import Any, Callable

from . import manifests, queries
from .client import Api, api_call, namespaced
from .diagnose import explain, refusal
from ..deaths import Death, of_container
from .lease import seconds_since
from .podstate import (PodState, crash, crash_loop_size, deletion_overdue, job_end,
                       lost_with_node, pod_state, slot_states, termination)
from .watch import JobMirror

#: At most this many pods are asked for events/logs by :meth:`diagnose` (it must stay fast
#: with 100 identical Pending pods).
_DIAGNOSE_PODS = 5
#: Pods whose logs are read at once when they are kept before a deletion.
_LOG_READERS = 8
#: Bytes from the start of a crashed engine's log that hold its registration, if any.
_REGISTRATION_BYTES = 65536


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
    startup_crash_window: float
    loop: Any
    log: Any
    notify_stop: Callable[[dict[str, Any]], Any]
    _delete_objects: Callable[..., None]
    release_lost_pod: Callable[[str], None]

    _mirror: JobMirror | None = None
    _stopping = False
    #: time.monotonic() of start(): crashes within startup_crash_window of it are counted
    #: (None after a reattach, whose start is unknown)
    _started: float | None = None
    #: the signal that ended the engines (SIGTERM, SIGKILL), for the stop data
    _signalled: int | None = None

    def _watch(self) -> None:
        self._end_lock = threading.Lock()
        #: crashed pod -> its state when the engine crashed before registering, else None
        self._crashes: dict[str, PodState | None] = {}
        #: pod name -> (slot, last lines of its log), read before the pod was deleted
        self._kept_logs: dict[str, tuple[int | None, str]] = {}
        #: pods of a lost node already released (marked Failed once, not at every event)
        self._released: set[str] = set()
        self._mirror = JobMirror(
            self.api, self.namespace, self.job_name, self._job_changed, self._pod_changed
        )
        self._mirror.start()

    def _claim_end(self) -> bool:
        """True for the one caller that ends the engine set: the watch threads and
        :meth:`stop` may all notice an end at once."""
        with self._end_lock:
            if self._stopping or self.state != "running":
                return False
            self._stopping = True
            return True

    def _tell_stopped(self, stop_data: dict[str, Any]) -> None:
        """From a watch thread: run ipyparallel's stop callbacks on the launcher's loop while
        it runs, else now, on this thread. Tornado would drop a callback for a closed loop
        (a finished ``*_sync`` call) and hold one for a stopped loop (a plain script between
        calls) without a word: ``on_stop`` would never fire and ``poll()`` would say running."""
        stop_data["identifier"] = self.job_name
        if self.loop.asyncio_loop.is_running():
            self.loop.add_callback(self.notify_stop, stop_data)
        else:
            self.notify_stop(stop_data)

    def _job_changed(self, job: dict[str, Any] | None) -> None:
        """Job watch thread: a failed, completed or deleted Job means the engines are gone:
        tell ipyparallel, unless the launcher ends them itself."""
        if job is None:
            assert self._mirror is not None
            self._mirror.stop()  # nothing left to watch; what was seen stays for diagnose()
            stop_data = {"exit_code": 1, "reason": f"Job {self.job_name} was deleted"}
            if self._signalled is not None:
                name = signals.Signals(self._signalled).name
                stop_data = {"exit_code": -self._signalled, "reason": f"engines ended by {name}"}
        elif (end := job_end(job)) is not None:
            stop_data = (
                {"exit_code": self._failure_exit_code(), "reason": f"{end.reason}: {end.message}"}
                if end.failed
                else {"exit_code": 0, "reason": "all engines exited"}
            )
        else:
            return
        if self._claim_end():
            self._tell_stopped(stop_data)

    def _pod_changed(self, pod: dict[str, Any]) -> None:
        """Pod watch thread: engines that keep crashing soon after the start cannot start at
        all — end the engine set instead of letting the Job retry them for minutes.

        Engines that crashed (:func:`.podstate.crash`) within :attr:`startup_crash_window`
        seconds of the start, before they registered (their log lacks
        :data:`~.manifests.REGISTERED_MARK`: a task that kills its engine is no crash loop),
        are counted; :func:`.podstate.crash_loop_size` of them end the set: their logs are
        kept, the Job is deleted and ipyparallel is told (so ``wait_for_engines`` raises
        ``EngineError``).

        A pod lost with its node, or still there well after its deletion deadline, is
        released for replacement first (see :meth:`.EngineControl.release_lost_pod`); the
        mirror hands every pod here again after each watch request, so a deadline that
        passes without an event is noticed too.
        """
        meta = pod.get("metadata") or {}
        name, deadline = meta.get("name", ""), meta.get("deletionTimestamp")
        if (deadline and name not in self._released and not self._stopping
                and (lost_with_node(pod) or deletion_overdue(pod, seconds_since(deadline)))):
            self._released.add(name)
            self.release_lost_pod(name)
        if self._started is None or time.monotonic() - self._started > self.startup_crash_window:
            return
        failed = crash(pod)
        if failed is None or failed.name in self._crashes:
            return
        try:  # the registration is near the start of the log, whatever came after it
            head = queries.pod_log(
                self.api, self.namespace, failed.name, manifests.ENGINE_CONTAINER,
                limit_bytes=_REGISTRATION_BYTES,
            )
        except Exception:
            return  # cannot tell: a later event of this pod asks again
        self._crashes[failed.name] = None if manifests.REGISTERED_MARK in head else failed
        crashes = [s for s in self._crashes.values() if s is not None]
        if len(crashes) < crash_loop_size(self.n) or not self._claim_end():
            return
        last = max(crashes, key=lambda s: s.created)
        self._keep_logs([s.name for s in crashes])
        try:
            self._delete_objects(wait=False)
        except Exception as e:  # the engine set has ended all the same; stop() deletes again
            self.log.warning("could not delete the crashing engine Job %s: %s", self.job_name, e)
        # a crash's message is the tail of its log: the last line names the error
        said = ([line for line in last.message.splitlines() if line.strip()] or [last.reason])[-1]
        self._tell_stopped({
            "exit_code": last.exit_code or 1,
            "reason": f"engines crash at start-up: {len(crashes)} engine pods failed "
            f"within {self.startup_crash_window:.0f} s of the start (the last, "
            f"{last.name}, exit code {last.exit_code}: {said})",
        })

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
        """Log tails of the engine pods: live ones from the API while the engines run, the
        others as kept before their deletion (:meth:`_keep_logs`), else their termination
        messages. ``remove`` is accepted for API compatibility: there is no local file to
        remove, and the output stays readable after :meth:`stop`, as other launchers' does."""
        if self._mirror is None:
            return ""
        running = self.state == "running"
        live = {p["metadata"]["name"] for p in self._mirror.pods()} if running else set()
        texts = dict(self._kept_logs)
        for pod in self._mirror.pods_with_history():
            state = pod_state(pod)
            if state.name in live:
                texts[state.name] = (state.index, self._pod_log(state.name))
            elif state.name not in texts:
                texts[state.name] = (state.index, state.message)
        parts = []
        for name, (index, text) in sorted(texts.items()):
            if text:
                parts.append(f"Output for engine {index} (pod {name})")
                parts.append(indent("".join(text.splitlines(True)[-self.output_limit :]), "  "))
        return "\n".join(parts)

    def _keep_logs(self, names: list[str]) -> None:
        """Read the log tails of pods about to be deleted, so :meth:`get_output` still shows
        them afterwards (the API forgets a pod's log with the pod)."""
        assert self._mirror is not None
        slots = {s.name: s.index for s in map(pod_state, self._mirror.pods_with_history())}
        try:
            with ThreadPoolExecutor(_LOG_READERS) as pool:
                texts = list(pool.map(self._pod_log, names))
        except RuntimeError:  # interpreter shutdown: no new threads, and no one left to read
            return
        for name, text in zip(names, texts):
            if text:
                self._kept_logs[name] = (slots.get(name), text)

    def _pod_log(self, pod: str, lines: int | None = None) -> str:
        try:
            return queries.pod_log(
                self.api, self.namespace, pod, manifests.ENGINE_CONTAINER,
                lines or self.output_limit,
            )
        except Exception:
            return ""  # no container yet, pod gone, or logs not readable: nothing to show

    def engine_states(self) -> list[dict[str, Any]]:
        """One dict per slot (index, name, phase, reason, message, exit_code, node, created),
        from the watch mirror: no I/O."""
        if self._mirror is None:
            return []
        return [s.as_dict() for s in slot_states(self._mirror.pods(), self.n)]

    def engine_death(self, engine: Any) -> Death | None:
        """What ``engine``'s pod (its identity with the controller is the pod's name) ended
        with, from the watch mirror (no I/O): ``OOMKilled`` with the memory limit, or the
        exit code. None while the mirror has not seen its container end."""
        if self._mirror is None or not engine.ident:
            return None
        for pod in self._mirror.pods_with_history():
            if pod["metadata"]["name"] == engine.ident:
                ended = termination(pod)
                return None if ended is None else of_container(*ended)
        return None

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
