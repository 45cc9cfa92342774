"""The session's lease on its engine Job, kept in the Job's own ``activeDeadlineSeconds``.

Why: a running engine notices a dead controller (heartbeats stop) and exits with the code
that fails the Job, which then deletes itself, its pods and its Secret. But a Job with no
running engine — scaled to zero while idle, pods Pending for lack of room, an image that
cannot be pulled — has nobody to notice, and would outlive a kernel that was SIGKILLed
outside the cluster for ever. Nothing of ours may keep running to clean up after it.

So the Job carries its own expiry. It is created with ``activeDeadlineSeconds`` one lease
long, and the session moves the deadline forward while it lives. When the kernel dies, the
renewals stop; within one lease the Job controller fails the Job (``DeadlineExceeded``),
removes its pods, ``ttlSecondsAfterFinished: 0`` deletes it, and the garbage collector the
Secret it owns. The clock runs in every state because scaling to zero lowers
``parallelism`` instead of suspending the Job (a suspended Job's clock stops).

The renewal thread measures elapsed time on the kernel's own clock from just before the Job
was created (the Job's ``startTime``, set by the Job controller, is a little later), so the
deadline it writes always leaves at least one full lease, without trusting clocks to agree.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: Renew this many times per lease: a few failed renewals (an API server restart) in a row
#: are survived.
RENEWALS_PER_LEASE = 4
#: Seconds between attempts while renewals fail.
RETRY_SECONDS = 2.0


def first_deadline(lease_seconds: int, active_deadline_seconds: int | None) -> int | None:
    """The Job's first ``activeDeadlineSeconds``: one lease, never past the user's own
    deadline (None: neither is set)."""
    limits = [s for s in (lease_seconds, active_deadline_seconds) if s]
    return min(limits) if limits else None


def next_deadline(
    elapsed: float, lease_seconds: int, active_deadline_seconds: int | None
) -> int:
    """The deadline (seconds since the Job started) that leaves one full lease from now,
    capped by the user's own ``active_deadline_seconds``."""
    deadline = math.ceil(elapsed) + lease_seconds
    return min(deadline, active_deadline_seconds) if active_deadline_seconds else deadline


def lease_patch(deadline_seconds: int) -> dict[str, Any]:
    """Merge patch moving the Job's ``activeDeadlineSeconds``."""
    return {"spec": {"activeDeadlineSeconds": deadline_seconds}}


class Lease:
    """Renews the Job's deadline every ``lease_seconds / RENEWALS_PER_LEASE`` on a daemon
    thread until :meth:`stop`.

    ``patch(body)`` sends a merge patch to the Job; ``started`` is the ``time.monotonic()``
    reading from before the Job was created. A renewal that fails is retried every
    :data:`RETRY_SECONDS`; a Job that is gone ends the thread (``gone(error)`` says so).
    """

    def __init__(
        self,
        patch: Callable[[dict[str, Any]], Any],
        lease_seconds: int,
        active_deadline_seconds: int | None,
        started: float,
        gone: Callable[[BaseException], bool],
    ) -> None:
        self._patch = patch
        self.lease_seconds = lease_seconds
        self._cap = active_deadline_seconds
        self._started = started
        self._gone = gone
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: the deadline last written, and the last renewal error in words (for status)
        self.deadline: int | None = first_deadline(lease_seconds, active_deadline_seconds)
        self.error = ""

    def start(self, name: str) -> None:
        """Start renewing (idempotent; nothing to do without a lease)."""
        if self._thread is not None or not self.lease_seconds:
            return
        self._thread = threading.Thread(target=self._run, name=f"kubemagic-lease-{name}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def renew(self) -> bool:
        """Move the deadline one lease ahead now; False when there is nothing left to renew
        (the Job is gone, or the user's own deadline is reached)."""
        deadline = next_deadline(time.monotonic() - self._started, self.lease_seconds,
                                 self._cap)
        if deadline != self.deadline:
            self._patch(lease_patch(deadline))
            self.deadline = deadline
        return not (self._cap and deadline >= self._cap)

    def _run(self) -> None:
        period = max(self.lease_seconds / RENEWALS_PER_LEASE, 1.0)
        wait = period
        while not self._stop.wait(wait):
            try:
                if not self.renew():
                    return
                self.error, wait = "", period
            except Exception as e:  # the API server restarting: try again soon
                if self._gone(e):
                    return
                self.error = f"renewing the engine Job's lease failed: {e!r}"
                log.debug(self.error)  # an API server restart: retried, not worth a print
                wait = RETRY_SECONDS


def seconds_since(timestamp: str) -> float:
    """Seconds from an RFC 3339 API timestamp until now on this machine's clock (≥ 0):
    how long a Job found on reattach has been running."""
    then = dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return max((dt.datetime.now(dt.timezone.utc) - then).total_seconds(), 0.0)
