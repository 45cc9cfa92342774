"""The machine's ceiling for a push fan-out: raw ZeroMQ, no ipyparallel, no pickling.

``n`` receiver processes each get the same ``nbytes`` message over TCP on loopback (one
PUSH socket per receiver, the buffer sent zero-copy) and acknowledge it. The time from the
first send to the last acknowledgement is what any design that copies the bytes into every
engine process needs at least on this machine; a push through the controller cannot beat it.
``push_fanout_s.n16 / push_fanout_s.n1`` is judged against this ratio, not against 1.

    python bench/fanout_ceiling.py 16     # prints seconds for one 100 MB fan-out to 16
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

_RECEIVER = r"""
import sys, zmq
ctx = zmq.Context()
data = ctx.socket(zmq.PULL); data.connect(sys.argv[1])
ack = ctx.socket(zmq.PUSH); ack.connect(sys.argv[2])
ack.send(b"hello")
while True:
    msg = data.recv(copy=False)
    if len(msg) == 0:
        break
    ack.send(b"%d" % len(msg))
"""


def fanout_seconds(n: int, nbytes: int = 100 * 10**6, repeats: int = 3) -> list[float]:
    """Seconds to deliver one ``nbytes`` message to each of ``n`` processes, per repeat."""
    import zmq

    payload = memoryview(bytearray(nbytes))
    ctx = zmq.Context()
    ack = ctx.socket(zmq.PULL)
    ack_port = ack.bind_to_random_port("tcp://127.0.0.1")
    senders, procs = [], []
    try:
        for _ in range(n):
            s = ctx.socket(zmq.PUSH)
            port = s.bind_to_random_port("tcp://127.0.0.1")
            senders.append(s)
            procs.append(subprocess.Popen(
                [sys.executable, "-c", _RECEIVER, f"tcp://127.0.0.1:{port}",
                 f"tcp://127.0.0.1:{ack_port}"]))
        for _ in range(n):
            if not ack.poll(60_000):
                raise TimeoutError("a receiver did not start within 60 s")
            ack.recv()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            for s in senders:
                s.send(payload, copy=False)
            for _ in range(n):
                if not ack.poll(120_000):
                    raise TimeoutError("a receiver did not acknowledge within 120 s")
                assert int(ack.recv()) == nbytes
            times.append(time.perf_counter() - t)
        return times
    finally:
        for s in senders:
            s.send(b"", copy=True)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for s in senders:
            s.close(linger=0)
        ack.close(linger=0)
        ctx.term()


if __name__ == "__main__":
    k = int(sys.argv[1]) if len(sys.argv) > 1 else 16
    print(f"{k} receivers: {statistics.median(fanout_seconds(k)):.3f} s")
