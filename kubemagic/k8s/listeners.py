"""TCP listeners standing in for the controller while ``kubemagic doctor``'s test pod runs.

The question is whether engine pods reach *this machine* on the controller's port range,
so the doctor listens there itself, on a few ports spread over the range (both ends and
the middle), and the test pod connects to them. Only connections that present the
doctor's random token count: another process or scanner hitting a port proves nothing.
"""

from __future__ import annotations

import json
import socket
import threading
from typing import Any


class Listeners:
    """Listen on up to three ports of ``port_range``; record who sent the token.

    Each wanted port (low end, middle, high end) falls back to the nearest free one —
    a kubemagic session may be using part of the range. :attr:`ports` is empty when the
    whole range is taken. Call :meth:`close` when done.
    """

    def __init__(self, port_range: tuple[int, int], token: str, bind: str = "0.0.0.0") -> None:
        self.token = token
        #: ports a connection presenting the token came in on
        self.reached: set[int] = set()
        #: what the probe found in the image, as it sent it over a connection
        self.report: dict[str, Any] | None = None
        self.sockets: list[socket.socket] = []
        low, high = port_range
        wanted = [low, high] if high > low else [low]
        if high - low > 1:
            wanted.insert(1, (low + high) // 2)
        for want in wanted:
            for port in sorted(range(low, high + 1), key=lambda p: abs(p - want)):
                if any(s.getsockname()[1] == port for s in self.sockets):
                    continue
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    sock.bind((bind, port))
                except OSError:
                    sock.close()
                    continue
                sock.listen(8)
                sock.settimeout(0.2)  # lets the serving thread notice close()
                self.sockets.append(sock)
                break
        self.ports = sorted(s.getsockname()[1] for s in self.sockets)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._serve, args=(s,), daemon=True) for s in self.sockets
        ]
        for t in self._threads:
            t.start()

    def _serve(self, sock: socket.socket) -> None:
        """Accept connections until closed; each may send ``token\\nreport-json\\n``."""
        port = sock.getsockname()[1]
        while not self._stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:  # includes the accept timeout
                continue
            with conn:
                lines = _read_lines(conn)
            if lines and lines[0].strip() == self.token:
                self.reached.add(port)
                if len(lines) > 1:
                    try:
                        self.report = json.loads(lines[1])
                    except ValueError:
                        pass

    def close(self) -> None:
        """Stop listening (idempotent)."""
        self._stop.set()
        for t in self._threads:
            t.join(1)
        for s in self.sockets:
            s.close()


def _read_lines(conn: socket.socket, limit: int = 65536) -> list[str]:
    """Up to two lines (at most ``limit`` bytes) from one connection, within 5 s."""
    conn.settimeout(5)
    data = b""
    try:
        while data.count(b"\n") < 2 and len(data) < limit:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data.decode(errors="replace").splitlines()
