"""One long-lived asyncio loop thread per kernel, and waiting that keeps widgets alive.

Why a dedicated thread: ipyparallel's cluster API is async, and the processes it spawns
carry a parent-death signal that fires when the *thread* that forked them exits. Running
every cluster coroutine on one thread that lives as long as the kernel makes that signal
mean "the kernel died" and nothing else.

Why polite waiting: while a ``%%kubemap`` cell blocks, the kernel does not read widget
messages (Scale, Stop). :func:`wait` pumps them between short waits, via jupyter-ui-poll.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from typing import Any, Awaitable, Callable, Iterator, TypeVar

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


def in_kernel() -> bool:
    """True inside an IPython kernel (a frontend can render widgets and send messages)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


_pumping = threading.local()



@contextlib.contextmanager
def ui_pump() -> Iterator[Callable[[], None]]:
    """Yield a function that processes pending widget messages (no-op outside a kernel).

    Only on the kernel's main thread, and only when the kernel is busy in a cell: that is
    when widget messages would otherwise wait until the cell ends.
    """
    if (getattr(_pumping, "active", False) or not in_kernel()
            or threading.current_thread() is not threading.main_thread()):
        yield lambda: None  # nested (a widget callback waiting) or not in a kernel
        return
    try:
        from jupyter_ui_poll import ui_events
    except ImportError:  # pragma: no cover - it is a dependency
        yield lambda: None
        return
    _pumping.active = True
    try:
        with ui_events() as poll:
            yield lambda: poll(20)
    finally:
        _pumping.active = False


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
            try:
                return fut.result(timeout=step)
            except concurrent.futures.TimeoutError:
                pass
            pump()
            if tick is not None:
                tick()


def wait_until(predicate: Callable[[], bool], timeout: float,
               tick: Callable[[], None] | None = None, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until true or ``timeout``; widgets stay responsive meanwhile."""
    deadline = time.monotonic() + timeout
    with ui_pump() as pump:
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            pump()
            if tick is not None:
                tick()
            time.sleep(interval)
    return True
