"""What a running map's items print, collected from its tasks while they run.

ipyparallel streams each task's stdout/stderr to the client as it is written; the text
grows on the task's ``AsyncResult``. :class:`MapOutput` polls the map's tasks (from the
dispatcher's thread), turns the text into item-tagged lines (:mod:`kubemagic.itemlog`),
keeps every line for ``%kubemap output``, and queues the cell's share for the thread
that waits on the map, which prints it into the cell.
"""

from __future__ import annotations

import dataclasses
import queue
import time
from typing import Any, Callable

from .itemlog import Line, OutputLog, TaskOutput

#: lines shown in the cell per map; the rest are kept for ``%kubemap output``
CELL_LINES = 200
#: at the map's end, how long to wait for output still travelling (it may trail the result)
TRAILING_S = 1.0


class MapOutput:
    """Output of one map's tasks: polled, tagged, kept, and queued for the cell."""

    def __init__(self, cap: int = CELL_LINES,
                 item_numbers: Callable[[int], int] | None = None) -> None:
        self.log = OutputLog(cap)
        #: a resumed map runs a subset of the items: its indices -> the user's numbers
        self._numbers = item_numbers
        self._tasks: dict[Any, tuple[TaskOutput, int]] = {}
        self._ending: list[Any] = []  # finished tasks whose output may not all be here
        self._cell: queue.SimpleQueue[str] = queue.SimpleQueue()

    def watch(self, ar: Any, engine: int) -> None:
        """Follow a task sent to ``engine``."""
        self._tasks[ar] = (TaskOutput(), engine)

    def poll(self) -> None:
        """Read what every followed task printed since the last poll."""
        for ar in list(self._tasks):
            self._read(ar)
        for ar in list(self._ending):
            if ar.wait_for_output(0):  # complete: read the rest, stop following it
                self._ending.remove(ar)
                self._close(ar)

    def finished(self, ar: Any) -> None:
        """The task's result arrived; its last output may still be on its way."""
        if ar not in self._tasks:
            return
        if ar.wait_for_output(0):
            self._close(ar)
        else:
            self._read(ar)
            self._ending.append(ar)

    def close(self) -> None:
        """The map ended: wait briefly for output still travelling, then flush it all."""
        deadline = time.monotonic() + TRAILING_S
        for ar in list(self._tasks):
            if ar.done():
                ar.wait_for_output(max(0.0, deadline - time.monotonic()))
            self._close(ar)
        self._ending.clear()
        notice = self.log.held_back_notice()
        if notice:
            self._cell.put(notice)

    def note(self, text: str) -> None:
        """A line from kubemagic itself for the cell (e.g. the cache stopped storing)."""
        self._cell.put(text)

    def take(self) -> list[str]:
        """Lines for the cell since the last call (called by the waiting thread)."""
        lines = []
        while True:
            try:
                lines.append(self._cell.get_nowait())
            except queue.Empty:
                return lines

    def _read(self, ar: Any) -> None:
        task, engine = self._tasks[ar]
        lines = task.feed(engine, "stdout", ar.stdout or "")
        self._add(lines + task.feed(engine, "stderr", ar.stderr or ""))

    def _close(self, ar: Any) -> None:
        self._read(ar)
        task, _ = self._tasks.pop(ar)
        self._add(task.flush())

    def _add(self, lines: list[Line]) -> None:
        if self._numbers is not None:
            lines = [line if line.index is None else
                     dataclasses.replace(line, index=self._numbers(line.index))
                     for line in lines]
        for text in self.log.add(lines):
            self._cell.put(text)
