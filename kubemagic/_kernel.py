"""The one module that knows ipykernel's internals: widget messages while a cell blocks.

While a ``%%kubemap`` cell blocks the kernel's main thread, ipykernel does not read the
shell socket, so widget clicks (Scale, Stop map) would wait until the cell ends. The
:class:`ShellPump` reads that socket itself between waits and handles comm messages at
once. Everything else (the next cells' ``execute_request`` when a client queued them —
JupyterLab's Run All does —, completions, inspections, kernel_info) is kept, unparsed and
unsigned-for, in arrival order, and handed back to the kernel's own loop when the wait
ends, where ipykernel runs it after this cell exactly as if the pump had never read it.

What it relies on (ipykernel >= 7.4, tested with 7.4.0; with 7.0.1 a failing cell's
stop_on_error sometimes did not abort the handed-back requests):

- ``kernel.shell_channel_thread.manager.get_shell_channel_to_subshell_pair(None).to_socket``
  is the inproc socket from which the main thread's loop reads main-shell messages;
- ``kernel.shell_main(None, frames)`` is that loop's handler: it takes the raw frames,
  authenticates them and queues them behind the running cell on an asyncio lock (FIFO);
- ``jupyter_client.Session.deserialize(..., content=False)`` checks the signature *without*
  recording it. Recording it here (``content=True``) is what made ipykernel reject the
  re-injected request as a "Duplicate Signature" and leave the next cell queued for ever.
  Only comm messages, which are handled here and never handed back, are fully
  deserialized (and so recorded, as ipykernel would).

ipykernel 6 had no shell channel thread; pyproject.toml pins ipykernel >= 7.4, < 8.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator

COMM_TYPES = frozenset({"comm_open", "comm_msg", "comm_close"})


def kernel() -> Any:
    """The running IPython kernel, or None outside one."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return getattr(shell, "kernel", None) if shell is not None else None


def in_kernel() -> bool:
    """True inside an IPython kernel (a frontend can render widgets and send messages)."""
    return kernel() is not None


class ShellPump:
    """Handle widget (comm) messages while the kernel's main thread is busy in a cell."""

    def __init__(self, kernel: Any) -> None:
        import zmq

        self.kernel = kernel
        manager = kernel.shell_channel_thread.manager
        self.socket = manager.get_shell_channel_to_subshell_pair(None).to_socket
        self._again = zmq.Again
        self._closed = zmq.ZMQError
        self._noblock = zmq.NOBLOCK
        self.deferred: list[Any] = []

    def __call__(self) -> None:
        """Read what is waiting: handle comm messages now, keep the rest for later."""
        while True:
            try:
                frames = self.socket.recv_multipart(self._noblock, copy=False)
            except self._again:
                return
            except self._closed:  # the kernel is shutting down and closed its socket
                return
            if self._is_comm(frames):
                self._handle_comm(frames)
            else:
                self.deferred.append(frames)

    def _is_comm(self, frames: list[Any]) -> bool:
        """Peek at the header only: authenticated, but not recorded as seen."""
        session = self.kernel.session
        try:
            _, rest = session.feed_identities(frames, copy=False)
            header = session.deserialize(rest, content=False, copy=False)["header"]
        except Exception:  # not ours to judge: ipykernel reports it when it gets it back
            return False
        return header.get("msg_type") in COMM_TYPES

    def _handle_comm(self, frames: list[Any]) -> None:
        kernel = self.kernel
        session = kernel.session
        parent = kernel.get_parent("shell")
        try:
            idents, rest = session.feed_identities(frames, copy=False)
            msg = session.deserialize(rest, content=True, copy=False)
            handler = kernel.shell_handlers.get(msg["header"]["msg_type"])
            if handler is None:
                return
            kernel.set_parent(idents, msg, channel="shell")
            handler(kernel.shell_stream, idents, msg)
        except Exception:  # a failing widget callback must not break the running map
            kernel.log.exception("kubemagic: widget message handler failed")
        finally:
            kernel.set_parent(None, parent, channel="shell")

    def close(self) -> None:
        """Give deferred messages back to the kernel, in order, to run after this cell.

        ``add_callback`` queues them on the main loop before anything it reads from the
        socket later, and ``shell_main`` queues each behind the running cell on a FIFO
        lock, so arrival order is kept (and a failing cell's ``stop_on_error`` aborts
        them exactly as it would have without the pump).
        """
        deferred, self.deferred = self.deferred, []
        for frames in deferred:
            self.kernel.io_loop.add_callback(self.kernel.shell_main, None, frames)


_pumping = threading.local()


@contextlib.contextmanager
def ui_pump() -> Iterator[Callable[[], None]]:
    """Yield a function that processes pending widget messages (no-op outside a kernel).

    Only on the kernel's main thread, and only once per thread (a widget callback that
    waits must not start a second pump): that is when widget messages would otherwise
    wait until the cell ends.
    """
    k = kernel()
    if (k is None or getattr(_pumping, "active", False)
            or getattr(k, "shell_channel_thread", None) is None
            or threading.current_thread() is not threading.main_thread()):
        yield lambda: None
        return
    _pumping.active = True
    pump = ShellPump(k)
    try:
        yield pump
    finally:
        try:
            pump.close()
        finally:
            _pumping.active = False
