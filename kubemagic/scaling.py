"""Resizing a session's fleet: drain before removing, wait with a diagnosis, park when idle.

Scaling down must not lose or repeat work: the highest slots stop receiving chunks, finish
what they hold, unregister, and only then does the backend remove them. Scaling up returns
once the new engines are ready (they get the replay log first, see :mod:`kubemagic.fleet`).
An idle fleet is parked at zero engines and brought back by the next map.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any, Callable

from . import controller
from ._loop import LoopThread, wait_future
from .errors import StartupError
from .events import Events, Topic
from .fleet import Fleet
from .idle import IdleWatch
from .startup import wait_for_engines

#: how often an adaptive fleet compares its size with the work (seconds)
ADAPT_INTERVAL_S = 0.5
#: how long an adaptive fleet keeps engines it has no work for before shrinking (seconds)
ADAPT_DOWN_S = 10.0


class Scaler:
    """Scale operations of one session; ``launcher`` returns the backend's engine launcher."""

    def __init__(self, fleet: Fleet, loop: LoopThread, launcher: Callable[[], Any], *,
                 start_timeout: float, shutdown_removed: bool, where: str, events: Events,
                 report: Callable[[str], None]) -> None:
        self.fleet = fleet
        self.start_timeout = start_timeout
        self.notice = ""  # not an error: e.g. "scaled to zero after 30 min idle"
        self._loop = loop
        self._launcher = launcher
        self._shutdown_removed = shutdown_removed
        self._where = where
        self._events = events
        self._report = report
        self._lock = threading.RLock()
        self._idle: IdleWatch | None = None
        self._busy: Callable[[], bool] = lambda: False
        self._adapting: tuple[int, int] | None = None  # (min, max) while adaptive
        self._scaling: Any = None  # the last scale's future
        self._parked = 0  # engines to start again after an idle park
        self._waking = False  # bringing them back: the idle watch must not park meanwhile

    def wait_for(self, n: int) -> None:
        """Block until ``n`` engines are ready, or raise the backend's diagnosis."""
        wait_for_engines(self.fleet, self._launcher, self._loop, n, self.start_timeout,
                         where=self._where, tick=lambda: self._events.emit(Topic.ENGINES))

    def scale(self, n: int, wait: bool = True) -> None:
        """Resize to ``n`` (checked by the caller); ``wait=False`` returns at once."""
        with self._lock:
            self.fleet.drain_above(n)
        self.fleet.refresh()
        before = len(self.fleet.ready())
        fut = self._scaling = self._loop.submit(self._scale(n))
        fut.add_done_callback(self._scale_done)
        if wait:
            wait_future(fut, timeout=self.start_timeout + 60)
            try:
                self.wait_for(n)
            except StartupError:
                # keep what runs; do not leave the platform retrying pods that cannot start
                with contextlib.suppress(Exception):
                    self.scale(max(before, len(self.fleet.ready())), wait=False)
                raise

    def lend(self, lost: int) -> None:
        """``lost`` engines went on their own: start as many fresh slots above the target
        now (:mod:`.surge`). The platform brings the lost slots back later; the surge then
        scales to the target again, draining the lent slots. At most ``target`` slots are
        lent, so engines that keep dying do not grow the fleet without bound; a resize
        under way decides alone."""
        with self._lock:
            if (self._scaling is not None and not self._scaling.done()) or self._parked:
                return
            fleet = self.fleet
            extra = min(lost, fleet.target - fleet.borrowed)
            if extra <= 0:
                return
            fleet.borrowed += extra
            fut = self._scaling = self._loop.submit(self._launcher().scale(fleet.target
                                                                           + fleet.borrowed))
            fut.add_done_callback(self._scale_done)

    def _scale_done(self, fut: Any) -> None:
        exc = fut.exception()
        if exc is not None:
            self._report(f"scaling failed: {exc}")

    async def _scale(self, n: int) -> None:
        while self.fleet.draining_busy():  # let removed slots finish the chunks they hold
            await asyncio.sleep(0.01)
        leaving = set(self.fleet.release_draining(self._shutdown_removed))
        await self._launcher().scale(n)
        # return once the controller has dropped them too, so that client[:] right after
        # a scale-down does not address an engine that is on its way out
        deadline = time.monotonic() + controller.UNREGISTER_S
        while leaving & self.fleet.registered() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self.fleet.forget_draining()

    # -- adaptive ------------------------------------------------------------------------
    def adapt(self, low: int, high: int, pending: Callable[[], int]) -> None:
        """Follow the work: ``pending()`` items -> that many engines, within [low, high].

        Up at once (work is waiting); down only after ADAPT_DOWN_S with less work, so a
        cell that maps again right away finds its engines (a scale-down drains, never
        loses a chunk). Stopped by :meth:`stop_adapting` (a manual scale).
        """
        self._adapting = (low, high)
        self.notice = f"adaptive: {low} to {high} engines, following the work"
        self._loop.submit(self._adapt_loop(low, high, pending))

    def stop_adapting(self) -> None:
        if self._adapting is not None:
            self._adapting = None
            self.notice = ""

    @property
    def adaptive(self) -> bool:
        return self._adapting is not None

    async def _adapt_loop(self, low: int, high: int, pending: Callable[[], int]) -> None:
        since_more = time.monotonic()  # when the fleet last had enough work for its size
        while self._adapting == (low, high):
            await asyncio.sleep(ADAPT_INTERVAL_S)
            if self._parked or (self._scaling is not None and not self._scaling.done()):
                continue  # parked when idle (the next map wakes it), or still resizing
            want = max(low, min(high, pending()))
            now = time.monotonic()
            if want >= self.fleet.target:
                since_more = now
            if want > self.fleet.target or (
                    want < self.fleet.target and now - since_more >= ADAPT_DOWN_S):
                try:
                    self.scale(want, wait=False)
                except Exception as e:  # say it; keep following the work
                    self._report(f"adaptive scaling to {want} failed: {e}")
                since_more = now

    # -- idle engines ---------------------------------------------------------------------
    def watch_idle(self, timeout: float, busy: Callable[[], bool]) -> None:
        """Park the fleet after ``timeout`` seconds in which ``busy()`` was never true."""
        self._busy = lambda: self._waking or busy()
        self._idle = IdleWatch(timeout, busy=self._busy, park=self._park)
        self._loop.submit(self._idle.run())

    def stop_watching(self) -> None:
        if self._idle is not None:
            self._idle.stop()

    def _park(self) -> None:
        """Idle for the whole timeout (loop thread): scale to zero, remember how many to
        bring back. Checked again under the lock: a map that just began keeps its engines."""
        assert self._idle is not None
        with self._lock:
            n = self.fleet.target
            if n == 0 or self._busy() or not self._idle.due(time.monotonic()):
                return
            self._parked = n
            self.notice = (f"no map for {self._idle.timeout:.0f} s: engines scaled to zero; "
                           f"the next map starts {n} again")
            self.scale(0, wait=False)

    def wake(self) -> None:
        """Before a map: bring back what an idle park removed, saying so in one line."""
        with self._lock:
            if self._idle is not None:
                self._idle.touch()
            n, self._parked = self._parked, 0
            parked = bool(n) and self.fleet.target == 0
            if parked:
                self.notice = ""
        if parked:
            assert self._idle is not None
            print(f"kubemagic: the engines were scaled to zero after {self._idle.timeout:.0f} s "
                  f"without a map; starting {n} again (pushes and code are replayed)")
            self._waking = True
            try:
                self.scale(n)
            finally:
                self._waking = False
