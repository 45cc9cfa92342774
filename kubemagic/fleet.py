"""The Fleet: which engines exist, which may take work, and what each must know first.

ipyparallel's Client knows engine ids; it does not know which engine has received the
replay log (pushes, code, imports), which slot it fills, which is being drained before a
scale-down, or how many chunks each holds. The Fleet keeps exactly that, for the session
(scale, push, execute) and the dispatcher (submit, settle) alike, and tells listeners what
changed through :class:`~kubemagic.events.Events`. It never calls up into either.

Threads: registrations arrive on the Client's IO thread and are queued; they are applied
(:meth:`Fleet.refresh`) on the caller's thread or on the loop thread, never on the IO
thread, since sending from it is not safe.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import ipyparallel as ipp

from . import remote, sharedpush
from ._loop import LoopThread, wait_future
from .errors import SessionError, UsageError
from .events import Events, Topic
from .replay import Entry, ReplayLog
from .sharedpush import SharedPush


@dataclass
class EngineInfo:
    """What the fleet knows about one engine."""

    id: int
    index: int = -1  # backend slot, learned from the engine itself
    host: str = ""
    pid: int = 0  # its process id, on its host
    ident: str = ""  # its identity with the controller (on Kubernetes: its pod's name)
    state: str = "joining"  # joining -> ready -> draining or leaving -> gone
    inflight: int = 0
    joined: float = 0.0


class Fleet:
    """The engines of one session: registry, replay-on-join, drain marks, in-flight counts.

    ``report`` receives a one-line description of a problem that no caller is waiting for
    (an engine that failed its first task), for the session's status.
    """

    def __init__(self, replay: ReplayLog, events: Events, loop: LoopThread,
                 report: Callable[[str], None], same_host: bool = False) -> None:
        self.replay = replay
        #: engines run on the kernel's machine as its user: large pushes go through one
        #: shared-memory file (:mod:`.sharedpush`)
        self.same_host = same_host
        self.engines: dict[int, EngineInfo] = {}
        #: the requested engine count: slots at or above it are drained as they join
        self.target = 0
        #: fresh slots lent above the target while the platform replaces lost engines
        #: (:mod:`.surge`); an explicit scale (:meth:`drain_above`) ends the loan
        self.borrowed = 0
        #: engines lost while ready, ever: dropped by the controller, or leaving on their own
        self.losses = 0
        self._events = events
        self._loop = loop
        self._report = report
        self._client: ipp.Client | None = None
        self._views: dict[int, Any] = {}
        self._queue: queue.SimpleQueue[tuple[str, int]] = queue.SimpleQueue()
        self._lock = threading.RLock()
        #: engines the controller dropped while they were ready (see :meth:`take_dropped`)
        self._dropped: list[EngineInfo] = []

    # -- connection ------------------------------------------------------------------------
    def attach(self, client: ipp.Client) -> None:
        """Start tracking ``client``'s engines (those registered already, then every new one)."""
        self._client = client
        # ipyparallel has no public hook for this; its own wait_for_engines uses the same
        # list (tested with ipyparallel 9.2)
        client._registration_callbacks.append(self._on_registration)
        for eid in list(client.ids):
            self._queue.put(("register", eid))

    def detach(self) -> None:
        """The controller is gone: every engine with it."""
        self._client = None
        with self._lock:
            for info in self.engines.values():
                info.state = "gone"
            self._views.clear()

    def _on_registration(self, event: dict[str, Any]) -> None:
        """Client IO thread: queue the event and have the loop thread apply it now.

        Waiting for the next API call would leave a joining engine without its replay while
        the kernel is idle (a Scale click after the cell ended, a pod the Job replaced).
        """
        self._queue.put((event["event"], int(event["id"])))
        self._loop.loop.call_soon_threadsafe(self._refresh_quietly)

    def _refresh_quietly(self) -> None:
        try:
            if self._client is not None:
                self.refresh()
        except Exception as e:  # keep the loop thread alive; say what happened
            self._report(f"bringing a new engine up to date failed: {e}")

    # -- registry --------------------------------------------------------------------------
    def refresh(self) -> None:
        """Apply queued registrations: send the replay log to every new engine first.

        Called before any work is handed out, so a joined engine is brought up to date
        (its queue is FIFO) before it gets a task. Listeners hear of the change after the
        lock is released: a listener that reads the fleet (the widget, under its own lock)
        would otherwise deadlock with a thread that holds its lock and waits for ours.
        """
        changed = False
        with self._lock:
            while True:
                try:
                    kind, eid = self._queue.get_nowait()
                except queue.Empty:
                    break
                if kind == "register":
                    changed = self._join(eid) or changed
                else:
                    self._gone(eid)
                    changed = True
        if changed:
            self._events.emit(Topic.ENGINES)

    def _join(self, eid: int) -> bool:
        if self._client is None or (eid in self.engines and self.engines[eid].state != "gone"):
            return False
        # its identity now, not only once it answers its first task: an engine dropped
        # before that (frozen, starved) must still be found by it (:mod:`.reaper`)
        info = self.engines[eid] = EngineInfo(eid, joined=time.time(),
                                              ident=_uuid(self._client, eid))
        view = self._view(eid)
        for entry in self.replay:
            _send_entry(view, entry)
        ar = view.apply_async(remote.joined)
        ar.add_done_callback(lambda f, info=info: self._learned(info, f))
        info.state = "ready"
        return True

    def _learned(self, info: EngineInfo, fut: Any) -> None:
        # runs in the client's IO thread: only record, never send from here
        try:
            data = fut.result()
        except Exception as e:  # the engine died (or went silent) right after joining
            if info.state == "ready":
                self._dropped.append(info)  # atomic: no lock on the client's IO thread
                self.losses += 1
            info.state = "gone"
            self._report(f"engine {info.id} failed its first task: {e}")
            return
        info.index, info.host, info.pid = data["index"], data["host"], data.get("pid", 0)
        info.ident = (getattr(fut, "metadata", None) or {}).get("engine_uuid") or ""
        if info.index >= self.target + self.borrowed and info.state == "ready":
            info.state = "draining"
        self._events.emit(Topic.ENGINES)

    def _gone(self, eid: int) -> None:
        info = self.engines.get(eid)
        if info is not None:
            if info.state == "ready":  # not draining or leaving: it did not go on purpose
                self._dropped.append(info)
                self.losses += 1
            info.state = "gone"
        self._views.pop(eid, None)

    def _view(self, eid: int) -> Any:
        view = self._views.get(eid)
        if view is None:
            if self._client is None:
                raise SessionError("the session is not running", fix="call start() first")
            view = self._views[eid] = self._client[eid]
            view.block = False
        return view

    def ready(self) -> list[int]:
        """Engines that may receive work (call :meth:`refresh` first to include new ones)."""
        with self._lock:
            return sorted(e.id for e in self.engines.values() if e.state == "ready")

    def live(self) -> list[EngineInfo]:
        with self._lock:
            return [e for e in self.engines.values() if e.state != "gone"]

    def slot_rows(self, launcher_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per-slot rows for displays: the backend's view of each slot (pod phase, reason)
        merged with the engine that fills it."""
        slots = {row["index"]: dict(row) for row in launcher_rows}
        for info in self.live():
            if info.index < 0:
                continue  # registered a moment ago; its slot is not known yet
            row = slots.setdefault(info.index, {"index": info.index, "name": info.host,
                                                 "phase": "", "reason": ""})
            row.update(engine=info.id, state=info.state, inflight=info.inflight)
        return [slots[k] for k in sorted(slots)]

    def take_dropped(self) -> list[EngineInfo]:
        """The engines the controller dropped while they were ready since the last call:
        dead, or alive but silent (:mod:`kubemagic.reaper` tells which)."""
        with self._lock:
            dropped, self._dropped = self._dropped, []
        return dropped

    def alive(self, eid: int) -> bool:
        """Whether the controller still lists engine ``eid`` (else: mark it gone)."""
        alive = self._client is not None and eid in self._client.ids
        if not alive:
            with self._lock:
                self._gone(eid)
        return alive

    # -- work --------------------------------------------------------------------------------
    def submit(self, eid: int, func: Callable[..., Any], *args: Any) -> Any:
        """Send one task to engine ``eid`` and count it in flight until :meth:`settle`."""
        ar = self._view(eid).apply_async(func, *args)
        with self._lock:
            info = self.engines.get(eid)
            if info is not None:
                info.inflight += 1
        return ar

    def inflight(self, eid: int) -> int:
        info = self.engines.get(eid)
        return info.inflight if info is not None else 0

    def settle(self, eid: int) -> None:
        """A task sent by :meth:`submit` finished, failed or was dropped."""
        with self._lock:
            info = self.engines.get(eid)
            if info is not None:
                info.inflight -= 1

    def forget(self, msg_ids: list[str]) -> None:
        """Drop ended tasks' results and metadata from the Client's caches.

        The Client keeps every result until purged: a session of many maps would hold all
        their results for ever (10M no-op items: 430 MB after the user deleted the list).
        Called once per map, when it has ended and its output is closed (prints may still
        arrive for a task after its result). Popped directly: ``purge_local_results``
        scans the whole task history on every call.
        """
        if self._client is None:
            return
        results, metadata = self._client.results, self._client.metadata
        for msg_id in msg_ids:
            results.pop(msg_id, None)
            metadata.pop(msg_id, None)

    def abort(self, msg_ids: list[str]) -> None:
        """Drop queued tasks from the engines (running ones finish)."""
        if self._client is not None and msg_ids:
            with contextlib.suppress(Exception):  # engines may be gone: nothing to abort
                self._client.abort(msg_ids, block=False)

    def broadcast(self, entry: Entry, what: str) -> None:
        """Send a push or code to every engine now, and record it for engines joining later.

        Raises :class:`UsageError` when it cannot be sent (not picklable) and
        :class:`SessionError` when it fails on an engine.
        """
        self.refresh()  # not under the lock: it tells listeners (see refresh)
        with self._lock:
            ids = [e.id for e in self.engines.values() if e.state in ("ready", "draining")]
            pending, shared = [], None
            try:
                if entry.kind == "push" and ids and self.same_host:
                    shared = SharedPush.write(entry.payload)
                if entry.kind == "push" and ids and (len(ids) > 1 or shared is not None):
                    # one message, fanned out by the controller's broadcast scheduler:
                    # 2.5x faster than engine by engine for 100 MB to 16 engines
                    # (bench/results/scale_2026-11-29.md); with a shared file, only its layout
                    view = (self._client.broadcast_view(targets=sorted(ids))
                            if len(ids) > 1 and self._client is not None else self._view(ids[0]))
                    pending.append(view.apply_async(sharedpush.load, *shared.args)
                                   if shared is not None else view.push(entry.payload, block=False))
                else:
                    for eid in sorted(ids):
                        pending.append(_send_entry(self._view(eid), entry))
            except Exception as e:
                if shared is not None:
                    shared.close()
                raise UsageError(
                    f"cannot send the {what} to the engines: {type(e).__name__}: {e}",
                    fix="only picklable objects can be sent; convert or drop the object",
                ) from None
            if entry.kind == "push":
                recorded = self.replay.push(entry.payload)
            else:
                recorded = self.replay.execute(entry.payload)
        try:
            self._wait_sent(pending, entry, recorded, what)
        finally:
            if shared is not None:
                shared.close()

    def _wait_sent(self, pending: list[Any], entry: Entry, recorded: Entry, what: str) -> None:
        for ar in pending:
            try:
                wait_future(ar)
            except ipp.error.RemoteError as e:
                if entry.kind == "execute":  # replaying it would fail on every new engine
                    self.replay.remove(recorded)
                raise SessionError(
                    f"the {what} failed on the engines: {e.ename}: {e.evalue}",
                    fix="fix the code and run the cell again (the failed code is not "
                    "replayed to engines that join later); a module missing on the engines "
                    "must be installed in the engine image",
                ) from None

    # -- scaling -----------------------------------------------------------------------------
    def drain_above(self, n: int) -> None:
        """New target ``n``: slots ``n`` and up take no new work from now on."""
        with self._lock:
            self.target, self.borrowed = n, 0
            for info in self.engines.values():
                if info.state == "ready" and info.index >= n:
                    info.state = "draining"
        self._events.emit(Topic.ENGINES)

    def leaving(self, eid: int) -> None:
        """Engine ``eid`` handed work back: it is leaving on its own (its pod is being
        deleted or evicted) and exits once its last reply is out. No new work for it, and
        nothing for a scale-down to drain or shut down."""
        with self._lock:
            info = self.engines.get(eid)
            if info is None or info.state not in ("ready", "draining"):
                return
            self.losses += info.state == "ready"  # a draining one was going anyway
            info.state = "leaving"
        self._events.emit(Topic.ENGINES)

    def draining_busy(self) -> bool:
        """Whether a draining engine still holds chunks it must finish."""
        with self._lock:
            return any(e.state == "draining" and e.inflight for e in self.engines.values())

    def release_draining(self, shutdown: bool) -> list[int]:
        """The draining engines' ids; with ``shutdown``, ask them to unregister now.

        A clean shutdown unregisters at once; a terminated engine would linger in the
        controller (and in ``client.ids``) until its heartbeats are missed.
        """
        with self._lock:
            leaving = [e.id for e in self.engines.values() if e.state == "draining"]
        if leaving and shutdown and self._client is not None:
            with contextlib.suppress(Exception):
                self._client.shutdown(targets=leaving, block=False)
        return leaving

    def registered(self) -> set[int]:
        """The ids the controller lists right now."""
        return set(self._client.ids) if self._client is not None else set()

    def forget_draining(self) -> None:
        """The backend removed the drained slots."""
        with self._lock:
            for info in self.engines.values():
                if info.state == "draining":
                    info.state = "gone"
        self._events.emit(Topic.ENGINES)


def _uuid(client: ipp.Client, eid: int) -> str:
    """Engine ``eid``'s identity with the controller, as the client recorded it at
    registration (ipyparallel keeps it in ``_engines``; tested with ipyparallel 9.2)."""
    ident = getattr(client, "_engines", {}).get(eid, "")
    return ident.decode() if isinstance(ident, bytes) else str(ident)


def _send_entry(view: Any, entry: Entry) -> Any:
    if entry.kind == "push":
        return view.push(entry.payload, block=False)
    return view.execute(entry.payload, block=False)
