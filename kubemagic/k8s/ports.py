"""The controller's port window: consecutive free ports inside the range a NetworkPolicy
allows, claimed so that two kernels starting at once on one machine never pick the same.

Probing alone races: two kernels (two notebooks run at the same moment on one server) can
both find a window free before either controller has bound it. So a window is also
claimed with an ``flock`` on a file named after it; other kernels on this machine skip a
claimed window until the claim is released — once the controller has bound the ports (then
probing sees them taken) — or until the claiming process exits (the kernel releases the
lock with its file descriptors, however it dies).
"""

from __future__ import annotations

import fcntl
import os
import random
import socket
import tempfile

from ..errors import UsageError
from .options import MIN_CONTROLLER_PORTS


class PortClaim:
    """A claimed window of ports; :meth:`release` (idempotent) lets other kernels see it
    free again — for real only if nothing has bound the ports meanwhile."""

    def __init__(self, ports: list[int], fd: int | None) -> None:
        self.ports = ports
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def claim_port_window(low: int, high: int, size: int = MIN_CONTROLLER_PORTS) -> PortClaim:
    """Claim a random window of ``size`` consecutive free ports within ``low..high``.

    Random, so kernels sharing a host or a pod spread over the range; every port stays
    inside the range a NetworkPolicy allows.
    """
    starts = list(range(low, high - size + 2, size))
    random.shuffle(starts)
    for start in starts:
        claimed, fd = _lock(start, size)
        if not claimed:
            continue
        window = list(range(start, start + size))
        claim = PortClaim(window, fd)
        if all(_port_free(p) for p in window):
            return claim
        claim.release()
    raise UsageError(
        f"no {size} free consecutive ports left in --port-range {low}-{high} "
        "(other kernels' controllers use them)",
        fix="stop unused kernels, or pass a wider --port-range (and widen the NetworkPolicy)",
    )


def free_port_window(low: int, high: int, size: int = MIN_CONTROLLER_PORTS) -> list[int]:
    """A free window for a caller that binds it at once (the claim is released here)."""
    claim = claim_port_window(low, high, size)
    claim.release()
    return claim.ports


def _lock(start: int, size: int) -> tuple[bool, int | None]:
    """(claimed, descriptor holding the lock). Where no lock file can be made (read-only
    temp dir), the window counts as claimed without a lock: probing still applies."""
    path = os.path.join(tempfile.gettempdir(), f"kubemagic-ports-{start}-{size}.lock")
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDONLY, 0o644)
    except OSError:
        return True, None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False, None
    return True, fd


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # zmq listens with SO_REUSEADDR: ports in TIME_WAIT are free for it too
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True
