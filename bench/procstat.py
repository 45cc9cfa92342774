"""What the processes of a benchmark cost: CPU seconds and resident memory, from /proc.

Wall time on a shared 2-core machine says how long something took, not where the time
went. Splitting the CPU seconds spent during a measurement between the kernel process,
the controller and the engines tells which of them is the bottleneck (Linux only; on
other systems every reading is empty).
"""

from __future__ import annotations

import os
import resource
import time
import threading
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def descendants(pid: int) -> list[int]:
    """PIDs of all live descendants of ``pid`` (via /proc; Linux only, else [])."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            fields = stat.rsplit(")", 1)[1].split()
            state, ppid = fields[0], int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
        if state != "Z":
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _kind(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmd = f.read()
    if b"ipyparallel.engine" in cmd or b"IPEngine" in cmd:
        return "engines"
    if b"ipyparallel.controller" in cmd or b"kubemagic._controller" in cmd:
        return "controller"
    return "other"


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


class CpuMeter:
    """CPU seconds of this process ("kernel") and its descendants, by kind, between
    :meth:`start` and :meth:`stop`. Processes that exit in between are not counted."""

    def __init__(self) -> None:
        self._before: dict[Any, tuple[str, float]] = {}

    def _read(self) -> dict[Any, tuple[str, float]]:
        out: dict[Any, tuple[str, float]] = {}
        for pid in descendants(os.getpid()):
            try:
                out[pid] = (_kind(pid), _cpu_s(pid))
            except (OSError, IndexError, ValueError):
                continue
        r = resource.getrusage(resource.RUSAGE_SELF)
        out["kernel"] = ("kernel", r.ru_utime + r.ru_stime)
        return out

    def start(self) -> "CpuMeter":
        self._before = self._read()
        return self

    def stop(self) -> dict[str, float]:
        """CPU seconds by kind (kernel, controller, engines, other) since :meth:`start`."""
        totals: dict[str, float] = {}
        for key, (kind, value) in self._read().items():
            totals[kind] = totals.get(kind, 0.0) + value - self._before.get(key, (kind, 0.0))[1]
        return {k: round(v, 3) for k, v in sorted(totals.items())}


def engine_cpu_s() -> list[float]:
    """Total CPU seconds of each live engine process below this one (e.g. what starting
    them cost, read right after they registered)."""
    out = []
    for pid in descendants(os.getpid()):
        try:
            if _kind(pid) == "engines":
                out.append(_cpu_s(pid))
        except (OSError, IndexError, ValueError):
            continue
    return out


def rss_mib(pid: int | None = None) -> float:
    """Resident memory of ``pid`` (default: this process) in MiB."""
    with open(f"/proc/{pid or os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class RssSampler:
    """Samples this process's RSS every ``interval`` seconds in a thread; ``peak`` is the
    highest seen. Complements ``ru_maxrss``, which cannot be reset between phases."""

    def __init__(self, interval: float = 0.02) -> None:
        self.peak = 0.0
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mib())
            time.sleep(self._interval)

    def __enter__(self) -> "RssSampler":
        self.peak = rss_mib()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib())
