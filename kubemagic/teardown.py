"""Stopping a session to its end, once, whatever interrupts the caller.

A KeyboardInterrupt (the notebook's stop button) can land anywhere in ``stop()``, or in
the clean-up of a failed ``start()``. Half a teardown is the worst outcome: a session that
still says "running" without a client (every later map fails with a confusing error),
engines or pods left behind. So the session marks itself stopped in a step no interrupt
can split (:func:`uninterrupted`) and starts the teardown there, on a thread of its own
(:class:`Teardown`) that an interrupt of the caller does not stop: the caller gets the
interrupt at once, the controller and the engines go on stopping in the background, and
the next map starts a new fleet. Stopping again waits for that same teardown.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

from . import lifetime

log = logging.getLogger("kubemagic")


class Teardown:
    """Stops the fleet and controller of ``session`` once, on a thread of its own;
    ``report`` gets what failed to stop."""

    def __init__(self, session: Any, fleet: Any, controller: Any,
                 report: Callable[[str], None]) -> None:
        self._session = session
        self._fleet = fleet
        self._controller = controller
        self._report = report
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._done = threading.Event()

    def begin(self) -> None:
        """Start the teardown, unless it has started already; return at once."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="kubemagic-teardown",
                                                daemon=True)
                self._thread.start()

    def wait(self) -> None:
        """Wait for the teardown's end. A KeyboardInterrupt while waiting is raised at
        once; the teardown goes on."""
        self._done.wait()

    def run(self) -> None:
        """:meth:`begin`, then :meth:`wait`."""
        self.begin()
        self.wait()

    def _run(self) -> None:
        try:
            self._fleet.detach()
            problem = self._controller.stop()
            if problem:
                log.warning(problem)
                self._report(problem)
            lifetime.untrack(self._session)
        except Exception as e:  # nobody may be waiting: keep it in the log and the status
            log.warning("stopping the session's engines failed", exc_info=True)
            self._report(f"stopping the engines failed: {e}")
        finally:
            self._done.set()


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Run the block whole: a KeyboardInterrupt (SIGINT) that arrives inside it is raised
    when it ends. Only the main thread receives signals, so elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[tuple[int, Any]] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: caught.append((number, frame)))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught and callable(previous):
            previous(*caught[0])  # the handler that was interrupted: KeyboardInterrupt
