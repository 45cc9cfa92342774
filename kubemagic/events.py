"""The one event type that flows up from the core to displays.

Commands flow down (magic → session → dispatch → fleet → engines); what changed flows back
up as a :class:`Topic` through an :class:`Events` hub, so the fleet and the dispatcher never
import the session, the widget or the progress bar that listen to them.
"""

from __future__ import annotations

import enum
import logging
from typing import Callable

log = logging.getLogger("kubemagic")


class Topic(str, enum.Enum):
    """What changed. A ``str`` enum: listeners written against the plain names still work."""

    STATE = "state"  #: the session started, stopped, failed, or has a new error/notice
    ENGINES = "engines"  #: an engine joined, left, or changed state (ready/draining/gone)
    MAP = "map"  #: a map started or finished
    PROGRESS = "progress"  #: a running map made progress (at most every 100 ms)
    OUTPUT = "output"  #: a running map's items printed something


Listener = Callable[[Topic], None]


class Events:
    """Fan-out of topics to listeners, from any thread; a failing listener is logged only."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def emit(self, topic: Topic) -> None:
        for listener in list(self._listeners):
            try:
                listener(topic)
            except Exception:  # a broken display must not break the map
                log.debug("listener failed", exc_info=True)
