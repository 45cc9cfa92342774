"""A map that ends leaves no engine busy with its items; and what a lost engine died of.

A map that ends early (``--timeout``, an interrupt of the kernel, ``cancel()``, a failing
item) drops its queued chunks from the engines, but a chunk that already runs goes on: an
endless item would hold its engine for ever, and the next map would queue chunks behind
it. So the engines still running the ended map's chunks are interrupted (SIGINT: the
running item raises ``KeyboardInterrupt``, as after Ctrl-C in a terminal), and an engine
still busy :data:`INTERRUPT_GRACE_S` later (an item that ignores the interrupt, or is
stuck in native code) is killed: its slot gets a new engine (local: the launcher starts
one; Kubernetes: the Job replaces the deleted pod). Nothing waits for that replacement
here: the next map starts at once and takes the new engine when it joins, as any other.

Signals and deaths go through the backend's launcher (``signal_engine``, ``engine_death``
of :class:`~kubemagic.backends.ScalableEngineLauncher`): a local engine is a process to
signal, a pod's engine is reached through its controller and its pod is deleted.
"""

from __future__ import annotations

import concurrent.futures
import logging
import signal
import time
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

from .deaths import Death
from .fleet import Fleet

log = logging.getLogger("kubemagic")

#: how long interrupted engines get to end their chunks before they are killed (seconds)
INTERRUPT_GRACE_S = 3.0
#: how long to wait for the platform to say what a lost engine died of (seconds): the
#: controller may notice the loss before the kubelet reports the container's end
DEATH_WAIT_S = 5.0


@dataclass(frozen=True)
class Busy:
    """A chunk of an ended map still out on an engine: items ``start..stop-1``."""

    ar: Any  # its AsyncResult
    engine: int
    start: int
    stop: int


class Recovery:
    """Frees the engines an ended map left busy, and asks what a lost engine died of.

    ``launcher`` returns the session's engine launcher.
    """

    def __init__(self, fleet: Fleet, launcher: Callable[[], Any]) -> None:
        self.fleet = fleet
        self._launcher = launcher

    def death(self, eid: int, wait: float = DEATH_WAIT_S) -> Death | None:
        """What engine ``eid`` died of, waiting up to ``wait`` seconds for the platform to
        say; None when it does not (an unknown engine, a backend that cannot tell)."""
        info = self.fleet.engines.get(eid)
        ask = getattr(self._safe_launcher(), "engine_death", None)
        if info is None or ask is None:
            return None
        deadline = time.monotonic() + wait
        while True:
            try:
                death = ask(info)
            except Exception:  # the platform's view is not available: say the rest
                log.debug("asking why engine %s died failed", eid, exc_info=True)
                return None
            if death is not None or time.monotonic() >= deadline:
                return death
            time.sleep(0.1)

    def stopped(self) -> str | None:
        """Why the backend ended the whole engine set (a Job that failed or was deleted),
        or None while it runs: a map left without engines then fails at once with the
        reason, instead of waiting for engines that cannot come."""
        launcher = self._safe_launcher()
        if launcher is None:
            return "the session stopped"
        if launcher.state != "after":  # ipyparallel's launcher states, as startup.py reads them
            return None
        reason = (launcher.stop_data or {}).get("reason")
        return str(reason) if reason else "the engines exited"

    def release(self, busy: list[Busy], number: Callable[[int], int], when: str) -> list[str]:
        """Free the engines still running ``busy`` chunks of a map that ended (``when``:
        "after the timeout", ...); ``number`` gives the user's number of an item index.

        Returns one sentence per engine that had to be interrupted or restarted, for the
        map's error. Takes at most :data:`INTERRUPT_GRACE_S` and a few API calls.
        """
        engines = sorted({b.engine for b in busy if not b.ar.done()})
        if not engines:
            return []
        for eid in engines:
            self._signal(eid, signal.SIGINT)
        theirs = [b for b in busy if b.engine in engines]
        concurrent.futures.wait([b.ar for b in theirs], timeout=INTERRUPT_GRACE_S)
        notes = []
        for eid in engines:
            mine = [b for b in theirs if b.engine == eid]
            if all(b.ar.done() for b in mine):
                notes.append(f"engine {eid} was still running {_interrupted(mine, number)} "
                             f"{when}; it was interrupted")
                continue
            items = _items(mine, number)
            if self._signal(eid, signal.SIGKILL):
                self.fleet.leaving(eid)  # no new work: it is on its way out
                notes.append(f"engine {eid} was still running {items} {when} and did not stop "
                             "when interrupted; it was restarted (a new engine takes its slot)")
            else:
                notes.append(f"engine {eid} was still running {items} {when} and could not "
                             "be stopped; %kubemap stop ends it")
        return notes

    def reap(self, info: Any) -> None:
        """End the process of an engine the controller dropped while it was ready, if it
        still runs (:mod:`kubemagic.reaper`): the backend's ``reap_engine`` where it has one
        (it knows whether the engine's pod still runs), else SIGKILL to its process, which
        reaches only a process that still runs."""
        launcher = self._safe_launcher()
        if launcher is None:
            return
        reap = getattr(launcher, "reap_engine", None)
        try:
            ended = reap(info) if reap is not None else launcher.signal_engine(info, signal.SIGKILL)
        except Exception as e:  # the platform is unreachable: the engine stays as it is
            log.warning("could not restart engine %s, dropped by the controller: %s", info.id, e)
            return
        if ended:
            log.warning("engine %s missed its heartbeats and was dropped by the controller while "
                        "its process still ran; it was restarted (a new engine takes its slot)",
                        info.id)

    def _signal(self, eid: int, sig: int) -> bool:
        info = self.fleet.engines.get(eid)
        send = getattr(self._safe_launcher(), "signal_engine", None)
        if info is None or send is None:
            return False
        try:
            return bool(send(info, sig))
        except Exception as e:  # a lost engine or API trouble: the map's error says so
            log.warning("could not send %s to engine %s: %s", signal.Signals(sig).name, eid, e)
            return False

    def _safe_launcher(self) -> Any:
        try:
            return self._launcher()
        except Exception:  # the session is stopping: no launcher to ask
            return None


def _items(chunks: list[Busy], number: Callable[[int], int]) -> str:
    """ "item 17" or "one of items 16..19": the engine's first chunk not back yet (an
    engine runs its chunks in the order they were sent)."""
    running = next((b for b in chunks if not b.ar.done()), chunks[0])
    if running.stop - running.start == 1:
        return f"item {number(running.start)}"
    return f"one of items {number(running.start)}..{number(running.stop - 1)}"


def _interrupted(chunks: list[Busy], number: Callable[[int], int]) -> str:
    """The item the interrupt stopped, read from its chunk's result (the item that failed
    with KeyboardInterrupt), else what the engine was running as far as the kernel knows."""
    for b in chunks:
        try:
            results = b.ar.get(0)[0]
        except Exception:  # aborted, or interrupted outside an item: look further
            continue
        for offset, value in enumerate(results):
            if getattr(value, "ename", None) == "KeyboardInterrupt":
                return f"item {number(b.start + offset)}"
    return _items(chunks, number)
