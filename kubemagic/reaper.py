"""Engines the controller dropped while their process still runs are restarted.

The controller declares an engine dead when it misses its heartbeats for about two seconds
(:data:`~kubemagic.controller.HEARTMONITOR_MISSES` beats): a machine starved of CPU — 32
engine pods starting on two cores — can make a healthy engine miss them. ipyparallel never
takes such an engine back, and the engine is not told: its process (its pod) runs on, idle
for ever, and the fleet stays one engine short, because the Job and the local launcher
replace only engines that end. So an engine dropped while it was ready (draining and
leaving engines go on purpose) is killed through its backend :data:`REAP_AFTER_S` later,
unless its process ended by itself meanwhile; its slot then gets a new engine, as after any
crash.
"""

from __future__ import annotations

import threading

from .events import Events, Topic
from .fleet import Fleet
from .recovery import Recovery

#: seconds between the controller dropping a ready engine and killing its process if it
#: still runs: time for a crashed engine's platform to report its end first (the kill is
#: then a no-op), so a crash is never mistaken for a hung engine
REAP_AFTER_S = 10.0


class Reaper:
    """Listens for engines the fleet lost while ready and has :meth:`Recovery.reap` end
    whatever of them still runs, :data:`REAP_AFTER_S` later."""

    def __init__(self, fleet: Fleet, recovery: Recovery, events: Events) -> None:
        self._fleet = fleet
        self._recovery = recovery
        events.subscribe(self._heard)

    def _heard(self, topic: Topic) -> None:
        if topic is not Topic.ENGINES:
            return
        for info in self._fleet.take_dropped():
            timer = threading.Timer(REAP_AFTER_S, self._recovery.reap, (info,))
            timer.daemon = True  # a kernel that exits does not wait for it
            timer.start()
