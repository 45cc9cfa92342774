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


class ShellPump:
    """Handle widget (comm) messages while the kernel's main thread is busy in a cell.

    ipykernel 7 hands shell messages to the main thread through an inproc socket read
    by the main asyncio loop — which a blocking cell stalls. This pump reads that socket
    itself between waits: comm messages (widget clicks and edits) are handled at once,
    anything else (the next cells' execute requests, completions) is kept in order and
    handed back to the kernel's loop when the wait ends, where it runs after this cell.
    (jupyter-ui-poll 1.1 calls ``kernel.do_one_iteration``, which ipykernel 7 removed.)
    """

    COMM_TYPES = frozenset({"comm_open", "comm_msg", "comm_close"})

    def __init__(self, kernel: Any) -> None:
        import zmq

        self.kernel = kernel
        manager = kernel.shell_channel_thread.manager
        self.socket = manager.get_shell_channel_to_subshell_pair(None).to_socket
        self.again = zmq.Again
        self.closed = zmq.ZMQError
        self.noblock = zmq.NOBLOCK
        self.deferred: list[Any] = []

    def __call__(self) -> None:
        session = self.kernel.session
        while True:
            try:
                frames = self.socket.recv_multipart(self.noblock, copy=False)
            except self.again:
                return
            except self.closed:  # the kernel is shutting down and closed its socket
                return
            try:
                idents, rest = session.feed_identities(frames, copy=False)
                msg = session.deserialize(rest, content=True, copy=False)
            except Exception:
                self.deferred.append(frames)  # let the kernel report it as usual
                continue
            if msg["header"]["msg_type"] in self.COMM_TYPES:
                self._handle_comm(idents, msg)
            else:
                self.deferred.append(frames)

    def _handle_comm(self, idents: list[Any], msg: dict[str, Any]) -> None:
        kernel = self.kernel
        handler = kernel.shell_handlers.get(msg["header"]["msg_type"])
        if handler is None:
            return
        parent = kernel.get_parent("shell")
        try:
            kernel.set_parent(idents, msg, channel="shell")
            handler(kernel.shell_stream, idents, msg)
        except Exception:  # a failing widget callback must not break the running map
            kernel.log.exception("kubemagic: widget message handler failed")
        finally:
            kernel.set_parent(None, parent, channel="shell")

    def close(self) -> None:
        """Give deferred messages back to the kernel, in order, to run after this cell."""
        for frames in self.deferred:
            self.kernel.io_loop.add_callback(self.kernel.shell_main, None, frames)
        self.deferred = []


def _kernel() -> Any:
    from IPython import get_ipython

    shell = get_ipython()
    return getattr(shell, "kernel", None)


@contextlib.contextmanager
def ui_pump() -> Iterator[Callable[[], None]]:
    """Yield a function that processes pending widget messages (no-op outside a kernel).

    Only on the kernel's main thread, and only when the kernel is busy in a cell: that is
    when widget messages would otherwise wait until the cell ends.
    """
    kernel = _kernel() if in_kernel() else None
    if (kernel is None or getattr(_pumping, "active", False)
            or threading.current_thread() is not threading.main_thread()):
        yield lambda: None  # nested (a widget callback waiting) or not in a kernel
        return
    _pumping.active = True
    try:
        if getattr(kernel, "shell_channel_thread", None) is not None:  # ipykernel >= 7
            pump = ShellPump(kernel)
            try:
                yield pump
            finally:
                pump.close()
        else:  # ipykernel 6: jupyter-ui-poll re-enters the kernel's message loop
            from jupyter_ui_poll import ui_events

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
