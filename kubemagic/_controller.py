"""The controller process of a session: ipyparallel's ``IPController`` with two changes.

``python -m kubemagic._guard kubemagic._controller [ipcontroller arguments]``; everything
else (arguments, config, connection files) is ipyparallel's own, and the kernel's settings
arrive as arguments (``kubemagic.controller.make_cluster``: one broadcast scheduler, the
heartbeat).

* **ZeroMQ I/O threads** (``$KUBEMAGIC_ZMQ_IO_THREADS``, set by the kernel): the threaded
  schedulers share ``zmq.Context.instance()``, created here before ipyparallel asks for it
  and gets libzmq's default of one thread. With CurveZMQ every engine's copy of a push is
  encrypted on the I/O thread that serves the engine's connection; one thread encrypts
  them one after the other.
* **No fixed pause at startup**: ``IPController.init_hub`` sleeps 0.25 s after creating
  its result store, before it writes the connection files. Nothing can be waiting for it
  then: engines and clients learn the controller's ports from those very files, and a
  ZeroMQ connect made before the matching bind simply completes when the bind happens.
  Every session start waited for it, a quarter of a cold start.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Iterator

import zmq
from ipyparallel.controller import app

from ._guard import IO_THREADS_ENV


class _TimeWithoutSleep:
    """The ``time`` module, except that ``sleep`` returns at once."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        """Skip the pause (see the module docstring)."""


@contextlib.contextmanager
def no_startup_pause() -> Iterator[None]:
    """Within the block, ``time.sleep`` as seen by ipyparallel's controller module returns at
    once. Only ``init_hub`` runs in it, on the main thread, before any scheduler thread."""
    app.time = _TimeWithoutSleep()  # type: ignore[assignment]
    try:
        yield
    finally:
        app.time = time


class Controller(app.IPController):
    """``IPController`` whose hub starts without the fixed pause."""

    def init_hub(self) -> None:
        with no_startup_pause():
            super().init_hub()


def create_zmq_context() -> None:
    """The process's shared context, with ``$KUBEMAGIC_ZMQ_IO_THREADS`` I/O threads."""
    zmq.Context.instance(io_threads=max(1, int(os.environ.get(IO_THREADS_ENV) or 1)))


def main() -> None:
    create_zmq_context()
    Controller.launch_instance()


if __name__ == "__main__":
    main()
