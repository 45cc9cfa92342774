"""The per-slot process of a forked local engine: a stand-in the launcher can watch.

``python -I -S .../_forkclient.py SOCKET MODULE [args...]`` asks the fork server
(:mod:`kubemagic._forkserver`) listening on ``SOCKET`` to fork ``python -m MODULE args...``
with this process's environment, cwd and stdin/stdout/stderr, then stands in for it:

* signals it receives (SIGINT to interrupt an item, SIGTERM to stop) are relayed to the
  engine; SIGKILL cannot be, but the fork server SIGKILLs the engine when this process's
  connection closes, so the engine never outlives it;
* it exits as the engine did: with its exit code, or killed by the same signal, so
  ``Popen.returncode``/psutil see ``-N`` as for an engine started on its own;
* when the fork server cannot be reached or refuses (it failed to start), it becomes the
  engine itself by ``exec`` of ``python -m kubemagic._guard MODULE args...``: the slot keeps
  its pid and its engine, only slower to start.

It runs as a script with ``-I -S``: no ``site``, no kubemagic import, only the standard
library (~10 ms of CPU, where a whole engine takes ~0.45 s). The request format is defined
here and read by the fork server.
"""

from __future__ import annotations

import os
import signal
import socket
import sys

#: signals relayed to the engine (the fork server accepts the same)
RELAYED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
           signal.SIGUSR2)
PR_SET_PDEATHSIG = 1
#: the kernel's pid, set by the launcher (as for kubemagic._guard)
PARENT_PID_ENV = "KUBEMAGIC_PARENT_PID"
#: exit code when the fork server went away while the engine ran (it died with it)
SERVER_LOST_EXIT = 1


def encode_request(cwd: str, argv: list[str], env: dict[str, str]) -> bytes:
    """``cwd``, the number of ``argv`` entries, argv, then ``NAME=VALUE`` items; NUL
    separated (none of these can hold a NUL)."""
    fields = [cwd, str(len(argv)), *argv, *(f"{k}={v}" for k, v in env.items())]
    return "\0".join(fields).encode("utf-8", "surrogateescape")


def decode_request(data: bytes) -> tuple[str, list[str], dict[str, str]]:
    """The inverse of :func:`encode_request`; ValueError if ``data`` is not one."""
    cwd, count, *rest = data.decode("utf-8", "surrogateescape").split("\0")
    argv, items = rest[:int(count)], rest[int(count):]
    return cwd, argv, dict(item.split("=", 1) for item in items if item)


def _arm_parent_death_signal() -> None:
    """Die with the kernel, as every engine does (see kubemagic._guard)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        expected = os.environ.get(PARENT_PID_ENV)
        if expected and os.getppid() != int(expected):
            os._exit(1)


class _Relay:
    """Signals received before the engine's pid is known wait in ``pending``."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.started = False
        self.pending: list[int] = []

    def __call__(self, signum: int, frame: object) -> None:
        if not self.started:
            self.pending.append(signum)
            return
        try:
            self.conn.send(b"sig %d" % signum)
        except OSError:  # the fork server is gone: the engine with it
            pass

    def start(self) -> None:
        self.started = True
        for signum in self.pending:
            self(signum, None)


def _fork(path: str, command: list[str], relay: _Relay) -> int | None:
    """Ask the fork server for the engine; its pid, or None if it cannot be had."""
    try:
        relay.conn.connect(path)
        request = encode_request(os.getcwd(), command, dict(os.environ))
        socket.send_fds(relay.conn, [request], [0, 1, 2])
        reply = relay.conn.recv(64)
    except OSError:
        return None
    return int(reply.split()[1]) if reply.startswith(b"pid ") else None


def _wait(conn: socket.socket) -> int | None:
    """The engine's exit status (``-N``: killed by signal N), None if the server is gone."""
    while True:
        try:
            message = conn.recv(64)
        except ConnectionError:
            return None
        if not message:
            return None
        if message.startswith(b"exit "):
            return int(message.split()[1])


def _exit_as(status: int) -> None:
    """End this process as the engine ended: same code, or killed by the same signal."""
    if status >= 0:
        os._exit(status)
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the engine crashed, not this process
    signal.signal(-status, signal.SIG_DFL)
    os.kill(os.getpid(), -status)
    os._exit(128 - status)  # a signal whose default action is not to end the process


def main() -> None:
    _arm_parent_death_signal()
    path, command = sys.argv[1], sys.argv[2:]
    relay = _Relay(socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET))
    for signum in RELAYED:
        signal.signal(signum, relay)
    if _fork(path, command, relay) is None:
        relay.conn.close()
        for signum in RELAYED:
            signal.signal(signum, signal.SIG_DFL if signum != signal.SIGINT
                          else signal.default_int_handler)
        for signum in relay.pending:  # as if they had come after the exec
            signal.raise_signal(signum)
        os.execv(sys.executable, [sys.executable, "-m", "kubemagic._guard", *command])
    relay.start()
    status = _wait(relay.conn)
    if status is None:
        print("kubemagic: the engine's fork server went away", file=sys.stderr, flush=True)
        status = SERVER_LOST_EXIT
    _exit_as(status)


if __name__ == "__main__":
    main()
