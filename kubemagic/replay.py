"""The replay log: pushes and imports every engine must have before it gets work.

ipyparallel pushes data and runs imports on the engines that exist *now*; an engine that
joins later (scale-up, a replaced pod) starts empty and fails on the first item that needs
``weights`` or ``np``. kubemagic records each broadcast here, in order, and sends the whole
log to every engine the first time it is seen, ahead of any task (an engine's queue is
FIFO, so the replay is guaranteed to run before the work sent after it).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Iterator


@dataclass(frozen=True)
class Entry:
    """One broadcast: ``kind`` is "push" (payload: dict of names) or "execute" (code)."""

    kind: str
    payload: Any


class ReplayLog:
    """An append-only, thread-safe list of broadcasts."""

    def __init__(self) -> None:
        self._entries: list[Entry] = []
        self._lock = threading.Lock()

    def push(self, namespace: dict[str, Any]) -> Entry:
        return self._append(Entry("push", dict(namespace)))

    def execute(self, code: str) -> Entry:
        return self._append(Entry("execute", code))

    def _append(self, entry: Entry) -> Entry:
        with self._lock:
            self._entries.append(entry)
        return entry

    def __iter__(self) -> Iterator[Entry]:
        with self._lock:
            return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def summary(self) -> dict[str, Any]:
        """What a new engine will receive, for status displays."""
        names: list[str] = []
        code = 0
        for e in self:
            if e.kind == "push":
                names.extend(e.payload)
            else:
                code += 1
        return {"pushed_names": sorted(set(names)), "code_blocks": code}
