"""Waiting for engines to connect, and the one error that says why they did not.

Engines that never come are the most common first failure on Kubernetes (an image that
cannot be pulled, a quota, a NetworkPolicy between pods and the controller). Waiting the
whole timeout and then saying "timeout" helps nobody: this asks the backend every couple
of seconds whether the platform refuses the engines, stops early when the backend gave up,
and ends with the backend's diagnosis.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable

from ._loop import LoopThread, wait_until
from .errors import SessionError, StartupError
from .fleet import Fleet

#: how often the platform is asked whether it refuses the engines (seconds)
REFUSAL_POLL_S = 2.0


def wait_for_engines(fleet: Fleet, launcher: Callable[[], Any], loop: LoopThread, n: int,
                     timeout: float, where: str, tick: Callable[[], None]) -> None:
    """Block (pumping UI events) until ``n`` engines are ready, or raise StartupError.

    ``launcher`` returns the backend's engine launcher (raises SessionError once the
    session is gone); ``where`` describes the backend for the error message.
    """
    t0 = time.monotonic()
    since = time.time() - 1
    probe: dict[str, Any] = {"fut": None, "next": t0 + 1.0, "refused": None}

    def refused() -> bool:
        fut = probe["fut"]
        if fut is not None and fut.done():
            probe["fut"] = None
            with contextlib.suppress(Exception):  # a failed probe proves nothing
                probe["refused"] = fut.result()
        if probe["fut"] is None and time.monotonic() >= probe["next"]:
            probe["next"] = time.monotonic() + REFUSAL_POLL_S
            probe["fut"] = loop.submit(launcher().refusal(since))
        return probe["refused"] is not None

    def stopped() -> bool:
        """The backend gave up on the whole engine set (Job failed or deleted, every
        local engine exited): waiting longer cannot bring engines."""
        try:
            return launcher().state == "after"
        except SessionError:
            return True

    def settled() -> bool:
        fleet.refresh()
        return len(fleet.ready()) >= n or stopped() or refused()

    wait_until(settled, timeout, tick=tick)
    ready = len(fleet.ready())
    if ready >= n:
        return
    if probe["refused"] is not None:
        raise StartupError(
            f"only {ready} of {n} engines could start: the cluster refuses to create more "
            f"engine pods ({where}):\n  {probe['refused']}",
            fix="ask for fewer engines or smaller --cpu/--memory, or stop other "
            "sessions of yours; the namespace's quota is set by your administrator "
            "(kubectl describe resourcequota shows it)",
        )
    # a failed Job (e.g. engines that cannot reach the controller) fails at once,
    # instead of after the whole start timeout
    when = (f"the engines stopped after {time.monotonic() - t0:.0f} s"
            if stopped() else f"within {timeout:.0f} s")
    diagnosis = loop.run(launcher().diagnose(), timeout=30)
    raise StartupError(
        f"only {ready} of {n} engines connected: {when} ({where}).\n{diagnosis}",
        fix="fix the cause quoted above, or raise --start-timeout if the engines are "
        "only slow to start",
    )
