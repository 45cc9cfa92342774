"""A fork server for local engines: import the engine's modules once, fork every engine.

An engine is a fresh Python that imports ipyparallel, ipykernel, zmq, tornado, ... before
it registers: ~0.45 s of CPU each, ~0.3 s of it imports. 64 engines on 2 cores take ~15 s
to start. The fork server (the "zygote") is one process per launcher that imports those
modules once, creates no thread and no ZeroMQ context (forking either is unsafe), and forks
an engine for each request; a forked engine starts in ~0.1 s of CPU.

``python -m kubemagic._forkserver MODULE LISTEN_FD STATE_DIR`` is the zygote: it serves
``python -m MODULE`` runs on the listening unix socket it inherits (``SOCK_SEQPACKET``, in
the private directory ``STATE_DIR``). Each request comes from one
:mod:`kubemagic._forkclient`, the per-slot process the launcher starts and watches: its
argv, environment and cwd, and its stdin/stdout/stderr as file descriptors. Per
connection, the zygote answers ``pid N`` after the fork, forwards ``sig N`` requests to the
engine (through a pidfd: never a recycled pid) and answers ``exit S`` (the Popen
returncode: ``-N`` for signal N) when the engine ends. A connection that closes before its
engine ended (the slot process was SIGKILLed) gets its engine SIGKILLed: no engine
outlives its slot's process.

Forked engines share what the zygote got at its start: the interpreter's flags and
start-up variables (``PYTHONPATH``, ``PYTHONHASHSEED``, ...) of the launcher's environment,
and the hash seed. Each gets its slot's environment, cwd and argv before the engine runs.

Lifetimes: the zygote dies with the kernel (parent-death signal, SIGTERM so it removes
``STATE_DIR``); each engine dies with the zygote (parent-death signal SIGKILL, re-armed in
the child as :mod:`kubemagic._guard` does, and in every process the engine forks).

:class:`ForkServer` is the launcher's handle: it binds the socket (so slots may connect
before the zygote has finished its imports: they wait in the backlog), starts the zygote
and stops it.
"""

from __future__ import annotations

import gc
import os
import runpy
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass

from ._forkclient import RELAYED, decode_request
from ._guard import PARENT_PID_ENV, _set_pdeathsig, wait_for_connection_file

#: what an engine imports before it registers (``bench/scale_probe.py start-imports``)
PRELOAD = ("ipyparallel.engine.app", "ipykernel.ipkernel", "ipykernel.debugger",
           "ipyparallel.engine.kernel", "ipykernel.zmqshell", "kubemagic.remote", "cloudpickle")
#: the socket's name in the state directory
SOCKET_NAME = "sock"
#: the largest request (argv, environment and cwd; see kubemagic._forkclient.encode_request)
MAX_REQUEST = 1 << 20
#: signals the zygote forwards to an engine (what the slot process relays)
FORWARDED = frozenset(RELAYED)
PR_SET_PDEATHSIG = 1
_UCRED = struct.Struct("3i")  # SO_PEERCRED: pid, uid, gid


# -- the launcher's side -----------------------------------------------------------------------
class ForkServer:
    """A started zygote for engines run as ``python -m module``; see the module docstring.

    Creating one binds the socket and starts the zygote without waiting for its imports;
    ``client_cmd()`` is the per-slot command; ``stop()`` ends the zygote and removes its
    directory. ``alive()`` tells whether it still serves (else slots fall back to a plain
    start of their own, see :mod:`kubemagic._forkclient`).
    """

    def __init__(self, module: str, env: dict[str, str], cwd: str, log_path: str) -> None:
        self.module = module
        self.log_path = log_path
        self.dir = tempfile.mkdtemp(prefix="kubemagic-fork-")  # mode 0700
        self.socket_path = os.path.join(self.dir, SOCKET_NAME)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as listener:
                listener.bind(self.socket_path)
                listener.listen(socket.SOMAXCONN)
                with open(log_path, "ab") as log:
                    self.process = subprocess.Popen(
                        [sys.executable, "-m", __name__, module, str(listener.fileno()),
                         self.dir],
                        pass_fds=[listener.fileno()], stdin=subprocess.DEVNULL, stdout=log,
                        stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def client_cmd(self) -> list[str]:
        """The per-slot command: ``python -I -S .../_forkclient.py SOCKET MODULE`` (add the
        module's arguments). ``-I -S``: the client needs nothing but the standard library,
        and starts in ~10 ms of CPU without ``site``."""
        client = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_forkclient.py")
        return [sys.executable, "-I", "-S", client, self.socket_path, self.module]

    def alive(self) -> bool:
        return self.process.poll() is None

    def engine_pid(self, client_pid: int) -> int | None:
        """The pid of the engine forked for the slot process ``client_pid`` (the zygote
        writes it down at the fork), or None."""
        try:
            with open(_pid_file(self.dir, client_pid)) as f:
                return int(f.read())
        except (OSError, ValueError):
            return None

    def forget(self, client_pid: int) -> None:
        """Drop what :meth:`engine_pid` knows of a slot process that ended."""
        try:
            os.unlink(_pid_file(self.dir, client_pid))
        except OSError:
            pass

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the zygote (its engines die with it), wait, remove its directory."""
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _pid_file(state_dir: str, client_pid: int) -> str:
    return os.path.join(state_dir, f"engine-of-{client_pid}")


# -- the zygote --------------------------------------------------------------------------------
@dataclass
class _Slot:
    """One connection: its slot process, and the engine forked for it."""

    conn: socket.socket
    client_pid: int
    pid: int = 0
    pidfd: int = -1
    #: set when the engine ended: the status was sent (or the connection is gone)
    done: bool = False


@dataclass
class _Request:
    """What a forked child runs, once it has left the zygote's loop."""

    cwd: str
    argv: list[str]
    env: dict[str, str]
    fds: list[int]  # the slot process's stdin, stdout, stderr


class _Zygote:
    """The zygote's loop: accept, fork, forward signals, report exits (single-threaded)."""

    def __init__(self, module: str, listener: socket.socket, state_dir: str) -> None:
        self.module = module
        self.listener = listener
        self.state_dir = state_dir
        self.pid = os.getpid()
        self.sel = selectors.DefaultSelector()
        self.sel.register(listener, selectors.EVENT_READ)
        self.slots: dict[int, _Slot] = {}  # by connection fd
        self.engines: dict[int, _Slot] = {}  # by pidfd

    def serve(self) -> _Request:
        """Serve until SIGTERM (SystemExit); in a forked child, return its request."""
        while True:
            for key, _ in self.sel.select():
                if key.fileobj is self.listener:
                    self._accept()
                elif key.data == "engine":
                    self._reap(self.engines.pop(key.fd))
                else:
                    request = self._receive(self.slots[key.fd])
                    if request is not None:
                        return request

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        pid, uid, _gid = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                       _UCRED.size))
        if uid != os.getuid():  # the directory is private: this is belt and braces
            conn.close()
            return
        self.slots[conn.fileno()] = _Slot(conn, pid)
        self.sel.register(conn, selectors.EVENT_READ, "slot")

    def _receive(self, slot: _Slot) -> _Request | None:
        try:
            data, fds, _flags, _addr = socket.recv_fds(slot.conn, MAX_REQUEST, 3)
        except OSError:
            data, fds = b"", []
        if not data:  # the slot process is gone: so is its engine
            self._close(slot)
            return None
        if slot.pid:
            sig = int(data.split()[1]) if data.startswith(b"sig ") else 0
            if sig in FORWARDED:
                self._signal(slot, sig)
            return None
        try:
            cwd, argv, env = decode_request(data)
            if len(fds) != 3 or not argv or argv[0] != self.module:
                raise ValueError(f"a request for {argv[:1]} with {len(fds)} descriptors")
        except ValueError as e:
            print(f"kubemagic fork server: refused {e}", file=sys.stderr, flush=True)
            for fd in fds:
                os.close(fd)
            self._close(slot)
            return None
        return self._fork(slot, _Request(cwd, argv, env, fds))

    def _fork(self, slot: _Slot, request: _Request) -> _Request | None:
        sys.stdout.flush()
        sys.stderr.flush()
        # a signal forwarded at once must find the child with default handlers, not the
        # zygote's: blocked over the fork, unblocked in the child once they are reset
        signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
        pid = os.fork()
        if pid == 0:
            for sig in (signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
            self._leave()
            return request
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
        for fd in request.fds:
            os.close(fd)
        slot.pid, slot.pidfd = pid, os.pidfd_open(pid)
        self.engines[slot.pidfd] = slot
        self.sel.register(slot.pidfd, selectors.EVENT_READ, "engine")
        with open(_pid_file(self.state_dir, slot.client_pid), "w") as f:
            f.write(str(pid))
        self._send(slot, b"pid %d" % pid)
        return None

    def _reap(self, slot: _Slot) -> None:
        self.sel.unregister(slot.pidfd)
        os.close(slot.pidfd)
        _, status = os.waitpid(slot.pid, 0)
        slot.done = True
        self._send(slot, b"exit %d" % os.waitstatus_to_exitcode(status))
        self._close(slot)

    def _send(self, slot: _Slot, message: bytes) -> None:
        try:
            slot.conn.send(message)
        except OSError:  # the slot process died meanwhile: its EOF is next
            pass

    def _signal(self, slot: _Slot, sig: int) -> None:
        if not slot.done:
            try:
                signal.pidfd_send_signal(slot.pidfd, sig)
            except ProcessLookupError:  # it ended: its exit is next
                pass

    def _close(self, slot: _Slot) -> None:
        if slot.pid:
            self._signal(slot, signal.SIGKILL)  # reaped when it ends
        if self.slots.pop(slot.conn.fileno(), None) is not None:
            self.sel.unregister(slot.conn)
            slot.conn.close()

    def _leave(self) -> None:
        """In a forked child: drop everything of the zygote's (no descriptor of another
        slot's connection may keep it open)."""
        self.sel.close()
        self.listener.close()
        for slot in list(self.slots.values()):
            slot.conn.close()
        for pidfd in self.engines:
            os.close(pidfd)


def _become_engine(request: _Request, zygote_pid: int) -> None:
    """In the forked child: what a fresh ``python -m kubemagic._guard MODULE`` would be."""
    if os.getppid() != zygote_pid:  # the zygote died before the child's death signal was set
        os._exit(1)
    os.setsid()  # as ipyparallel starts each engine: no signal to a group reaches it
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in enumerate(request.fds):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(request.env)
    os.chdir(request.cwd)
    module = request.argv[0]
    if module == "ipyparallel.engine":
        wait_for_connection_file()
    sys.argv = list(request.argv)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def _on_sigterm(signum: int, frame: object) -> None:
    # a second one (the launcher's stop, then the kernel's death) must not interrupt the
    # clean-up this one starts
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def main() -> None:
    module, fd, state_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        expected = os.environ.get(PARENT_PID_ENV)
        if expected and os.getppid() != int(expected):
            sys.exit("kubemagic fork server: the kernel is gone")
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGHUP, _on_sigterm)
    os.register_at_fork(after_in_child=_set_pdeathsig)  # engines die with the zygote
    listener = socket.socket(fileno=fd)
    zygote_pid = os.getpid()
    try:
        import importlib
        import threading

        for name in PRELOAD:
            importlib.import_module(name)
        if threading.active_count() > 1:
            raise RuntimeError(f"importing {PRELOAD} started threads: forking is unsafe")
        # the engines' garbage collections leave the imported objects alone: their pages
        # stay shared with the zygote instead of being copied into every engine
        gc.freeze()
        request = _Zygote(module, listener, state_dir).serve()
    except BaseException as e:
        if os.getpid() == zygote_pid:
            shutil.rmtree(state_dir, ignore_errors=True)
            if not isinstance(e, SystemExit):
                traceback.print_exc()
                sys.exit(1)
        raise
    _become_engine(request, zygote_pid)


if __name__ == "__main__":
    main()
