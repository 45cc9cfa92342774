"""A lost engine is replaced at once by a fresh slot, not after the platform's backoff.

An Indexed Job recreates a failed or deleted pod only after its per-index backoff (10 s,
then 20 s, ...), so a map on 2 engines that loses one runs on one for that long: +5.5 s
on a 400 x 50 ms map. A new index has no backoff. So when an engine goes on its own
(its pod deleted, evicted, or its node lost; see :attr:`.Fleet.losses`), the fleet is
scaled to ``target + lost`` at once: the fresh slot takes the lost one's share of the
work about a pod start later. Once the platform has brought the lost slot back (every
slot below the target has a ready engine), the fleet scales to its target again, which
drains the lent slots (they finish the chunks they hold; nothing is lost or rerun).

Only for backends whose platform replaces lost engines late (``BackendSpec.
surge_lost_engines``): the local launcher restarts a dead engine at once.
"""

from __future__ import annotations

import threading
from typing import Callable

from ._loop import LoopThread
from .events import Events, Topic
from .scaling import Scaler


class Surge:
    """Lends fresh slots for lost engines and gives them back; see the module's docstring.

    ``running`` says whether the session runs: losses while it starts or stops are not
    replaced (the start waits for its engines; a stop removes them all)."""

    def __init__(self, scaler: Scaler, events: Events, loop: LoopThread,
                 running: Callable[[], bool]) -> None:
        self._fleet = scaler.fleet
        self._scaler = scaler
        self._loop = loop
        self._running = running
        self._seen = 0
        self._queued = threading.Event()
        events.subscribe(self._heard)

    def _heard(self, topic: Topic) -> None:
        # any thread, the client's IO thread included: act on the loop thread, once per burst
        if topic is Topic.ENGINES and not self._queued.is_set():
            self._queued.set()
            self._loop.submit(self._check())

    async def _check(self) -> None:
        self._queued.clear()
        fleet = self._fleet
        lost, self._seen = fleet.losses - self._seen, fleet.losses
        if not self._running() or fleet.target == 0:
            return
        if lost > 0:
            self._scaler.lend(lost)
        elif fleet.borrowed and len({e.index for e in fleet.live() if e.state == "ready"
                                     and 0 <= e.index < fleet.target}) == fleet.target:
            # the lost slots are back (a lent slot that never started is given back too)
            self._scaler.scale(fleet.target, wait=False)
