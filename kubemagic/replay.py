"""The replay log: pushes and imports every engine must have before it gets work.

ipyparallel pushes data and runs imports on the engines that exist *now*; an engine that
joins later (scale-up, a replaced pod) starts empty and fails on the first item that needs
``weights`` or ``np``. kubemagic records each broadcast here, in order, and sends the whole
log to every engine the first time it is seen, ahead of any task (an engine's queue is
FIFO, so the replay is guaranteed to run before the work sent after it).

The log holds one value per pushed name: pushing a name again replaces the value where it
was first pushed (code recorded after that first push may use the name, so it must stay
ahead of it), and the old value is released. Code that failed on the engines is taken out
(:meth:`ReplayLog.remove`): replaying it would only fail again on every new engine.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from typing import Any, Iterator


@dataclass(frozen=True)
class Entry:
    """One broadcast: ``kind`` is "push" (payload: dict of names) or "execute" (code)."""

    kind: str
    payload: Any


def size_of(value: Any) -> int:
    """Bytes a pushed value holds, cheaply: buffers by their length, arrays by ``nbytes``,
    anything else by ``sys.getsizeof`` (shallow: a list of arrays is underestimated)."""
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    if isinstance(value, (bytes, bytearray, memoryview, str)):
        return len(value)
    return sys.getsizeof(value)


class ReplayLog:
    """An ordered, thread-safe list of broadcasts with one value per pushed name."""

    def __init__(self) -> None:
        self._entries: list[Entry] = []
        self._lock = threading.Lock()

    def push(self, namespace: dict[str, Any]) -> Entry:
        """Record a push; names pushed before get the new value in their old place."""
        with self._lock:
            fresh = dict(namespace)
            for i, entry in enumerate(self._entries):
                if entry.kind != "push":
                    continue
                again = entry.payload.keys() & fresh.keys()
                if again:
                    self._entries[i] = Entry("push", {
                        k: fresh.pop(k) if k in again else v for k, v in entry.payload.items()
                    })
            entry = Entry("push", fresh)
            if fresh:
                self._entries.append(entry)
            return entry

    def execute(self, code: str) -> Entry:
        entry = Entry("execute", code)
        with self._lock:
            self._entries.append(entry)
        return entry

    def remove(self, entry: Entry) -> None:
        """Take out a broadcast that failed on the engines."""
        with self._lock:
            self._entries = [e for e in self._entries if e is not entry]

    def forget(self, name: str) -> bool:
        """Drop a pushed name (engines that join later will not have it); True if it was
        there. Its value is released once nothing else refers to it."""
        with self._lock:
            found = False
            kept = []
            for entry in self._entries:
                if entry.kind == "push" and name in entry.payload:
                    found = True
                    rest = {k: v for k, v in entry.payload.items() if k != name}
                    if rest:
                        kept.append(Entry("push", rest))
                    continue
                kept.append(entry)
            self._entries = kept
            return found

    def clear(self) -> None:
        """The session ended: release everything it pushed."""
        with self._lock:
            self._entries = []

    def __iter__(self) -> Iterator[Entry]:
        with self._lock:
            return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def summary(self) -> dict[str, Any]:
        """What a new engine will receive, for status displays."""
        sizes: dict[str, int] = {}
        code = 0
        for e in self:
            if e.kind == "push":
                sizes.update({name: size_of(value) for name, value in e.payload.items()})
            else:
                code += 1
        return {"pushed_names": sorted(sizes), "code_blocks": code,
                "pushed_bytes": sum(sizes.values()), "sizes": dict(sorted(sizes.items()))}
