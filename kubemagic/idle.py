"""Idle engines give their CPUs back: a fleet without work is scaled to zero.

On a shared cluster, engines that wait for the next cell hold CPUs (and GPUs) others could
use, until the kernel goes away — hours, if the researcher went to lunch. After
``idle_timeout`` seconds without a running map the session parks the fleet at zero
engines; the next map brings the same number back, replaying pushes and code as for any
engine that joins, and says so in one line. The controller stays, so the session and its
replay log survive.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable


class IdleWatch:
    """Calls ``park`` once the session has been idle for ``timeout`` seconds.

    ``busy`` says whether work is running (a map); while it is, the idle clock restarts,
    so a two-hour map is not followed by an instant park. Runs on the session's loop;
    ``park`` checks :meth:`due` again under the session's lock, since a map may begin
    between this check and that one.
    """

    def __init__(self, timeout: float, busy: Callable[[], bool],
                 park: Callable[[], None]) -> None:
        self.timeout = timeout
        self._busy = busy
        self._park = park
        self._last = time.monotonic()
        self._stopped = False

    def touch(self) -> None:
        """Work happened (or was asked for): restart the idle clock."""
        self._last = time.monotonic()

    def due(self, now: float) -> bool:
        """True when the fleet has been idle for the whole timeout."""
        return now - self._last >= self.timeout

    def stop(self) -> None:
        self._stopped = True

    async def run(self) -> None:
        """Check a few times per timeout (at least every 5 s) until stopped."""
        interval = min(max(self.timeout / 4, 0.1), 5.0)
        while not self._stopped:
            await asyncio.sleep(interval)
            if self._stopped:
                return
            if self._busy():
                self.touch()
            elif self.due(time.monotonic()):
                self._park()
                self.touch()
