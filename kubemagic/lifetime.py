"""Every live session of this kernel, stopped when the kernel exits.

A kernel that shuts down or restarts must not leave engines, pods or a controller behind.
Sessions register here when created; one ``atexit`` hook stops them all. It is registered
again each time a session is created, so it runs before ipyparallel's and the kubernetes
client's own hooks (``atexit`` is LIFO, and they register at import time, possibly after
kubemagic was imported).
"""

from __future__ import annotations

import atexit
import contextlib
import weakref
from typing import Any

_live: "weakref.WeakSet[Any]" = weakref.WeakSet()


def track(session: Any) -> None:
    """Stop ``session`` at exit (unless it was :func:`untrack` ed first)."""
    _live.add(session)
    atexit.unregister(stop_all)
    atexit.register(stop_all)


def untrack(session: Any) -> None:
    _live.discard(session)


def stop_all() -> None:
    """Kernel shutdown or restart: stop every session (engines, pods, controller)."""
    for session in list(_live):
        with contextlib.suppress(Exception):
            session.stop()


atexit.register(stop_all)
