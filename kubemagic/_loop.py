"""One long-lived asyncio loop thread per kernel, and waiting that keeps widgets alive.

Why a dedicated thread: ipyparallel's cluster API is async, and the processes it spawns
carry a parent-death signal that fires when the *thread* that forked them exits. Running
every cluster coroutine on one thread that lives as long as the kernel makes that signal
mean "the kernel died" and nothing else.

Why polite waiting: while a ``%%kubemap`` cell blocks, the kernel does not read widget
messages (Scale, Stop). :func:`wait_future` and :func:`wait_until` pump them between short
waits through :mod:`kubemagic._kernel`, the one module that knows ipykernel's internals.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import Awaitable, Callable, TypeVar

from ._kernel import ui_pump

T = TypeVar("T")


class LoopThread:
    """An asyncio event loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._run, name="kubemagic-loop", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Awaitable[T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]

    def run(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop thread; wait for it while pumping UI events."""
        fut = self.submit(coro)
        try:
            return wait_future(fut, timeout)
        except BaseException:
            fut.cancel()
            raise


_shared: LoopThread | None = None
_shared_lock = threading.Lock()


def shared_loop() -> LoopThread:
    """The kernel-wide loop thread (created on first use)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = LoopThread()
        return _shared


def wait_future(fut: concurrent.futures.Future[T], timeout: float | None = None,
                tick: Callable[[], None] | None = None, interval: float = 0.05) -> T:
    """Wait for ``fut``, pumping UI events and calling ``tick`` every ``interval``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with ui_pump() as pump:
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"timed out after {timeout} s")
            step = interval if left is None else min(interval, left)
            # wait() rather than result(timeout): a future that *failed* with a
            # TimeoutError must raise, not look like "still running" until the deadline.
            done, _ = concurrent.futures.wait([fut], timeout=step)
            if done:
                return fut.result()
            pump()
            if tick is not None:
                tick()


def wait_until(predicate: Callable[[], bool], timeout: float,
               tick: Callable[[], None] | None = None, interval: float = 0.02,
               event: threading.Event | None = None) -> bool:
    """Poll ``predicate`` until true or ``timeout``; widgets stay responsive meanwhile.

    With ``event`` (set when the predicate becomes true) the wait between polls ends the
    moment it is set, instead of at the next interval: a short map returns in
    microseconds, not up to ``interval`` later.
    """
    deadline = time.monotonic() + timeout
    with ui_pump() as pump:
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            pump()
            if tick is not None:
                tick()
            if event is not None:
                event.wait(interval)
            else:
                time.sleep(interval)
    return True
