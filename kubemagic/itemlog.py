"""What a map's items printed, line by line and item by item (client side, pure code).

On the engine, :func:`kubemagic.remote.run_chunk` starts every line an item writes with a
mark naming the item (``"\\x1e" + index + "\\x1f"``). ipyparallel forwards each task's
stdout and stderr to the client as text that grows while the task runs
(``AsyncResult.stdout`` / ``.stderr``). :class:`TaskOutput` turns that text into
:class:`Line` records as lines complete; :class:`OutputLog` keeps them all and decides
which the cell shows, so a map of 10,000 chatty items does not flood the notebook.

No ipyparallel or Jupyter here: the dispatcher polls the tasks and feeds the text in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal

from .remote import MARK_END, MARK_START

Stream = Literal["stdout", "stderr"]

#: how the cell learns where the lines it was not shown are
HELD_BACK_HINT = "%kubemap output"


@dataclass(frozen=True)
class Line:
    """One complete line of output: which item wrote it (None: outside any item, e.g.
    the cell body run on the engine), on which engine and stream; without its newline."""

    index: int | None
    engine: int
    stream: Stream
    text: str


def parse_line(engine: int, stream: Stream, raw: str) -> Line:
    """One raw line (no newline) as a :class:`Line`: its item mark, if any, removed."""
    if raw.startswith(MARK_START):
        end = raw.find(MARK_END, 1)
        digits = raw[1:end]
        if end > 1 and digits.isascii() and digits.isdigit():
            return Line(int(digits), engine, stream, raw[end + 1:])
    return Line(None, engine, stream, raw)


class TaskOutput:
    """Splits the output of one task (one chunk on one engine) into :class:`Line` s.

    Fed the *whole text so far* of a stream — what ``AsyncResult.stdout`` returns on each
    poll — because that is what the caller has: feeding the same text again yields
    nothing, and text only ever grows. A line is yielded once its newline arrived (so an
    item mark split between two polls is never misread); :meth:`flush` yields the
    unfinished last lines when the task has ended.
    """

    def __init__(self) -> None:
        #: per (engine, stream): the latest text, and how much of it became lines
        self._text: dict[tuple[int, Stream], str] = {}
        self._used: dict[tuple[int, Stream], int] = {}

    def feed(self, engine: int, stream: Stream, text_so_far: str) -> list[Line]:
        """The lines completed since the last feed of this engine's ``stream``."""
        key = (engine, stream)
        self._text[key] = text_so_far
        used = self._used.get(key, 0)
        end = text_so_far.rfind("\n", used) + 1
        if end <= used:
            return []
        self._used[key] = end
        return [parse_line(engine, stream, raw)
                for raw in text_so_far[used:end - 1].split("\n")]

    def flush(self) -> list[Line]:
        """The task ended: its unfinished last lines, as lines."""
        lines = []
        for (engine, stream), text in self._text.items():
            used = self._used.get((engine, stream), 0)
            if used < len(text):
                lines.append(parse_line(engine, stream, text[used:]))
                self._used[(engine, stream)] = len(text)
        return lines


def format_line(line: Line) -> str:
    """``[item 17 · engine 2] text``; stderr lines say so, lines of no item name none."""
    tags = ([] if line.index is None else [f"item {line.index}"]) + [f"engine {line.engine}"]
    if line.stream == "stderr":
        tags.append("stderr")
    return f"[{' · '.join(tags)}] {line.text}"


class OutputLog:
    """Every line of one map's output, in arrival order (so each item's lines keep the
    order it wrote them in), and the first ``cap`` of them for the cell.

    The full log is for ``%kubemap logs`` and the widget; the cell gets a bounded excerpt
    plus :meth:`held_back_notice`, so its size does not grow with the map.
    """

    def __init__(self, cap: int = 200) -> None:
        self.cap = cap
        self.lines: list[Line] = []
        self._shown = 0

    def add(self, lines: Iterable[Line]) -> list[str]:
        """Keep ``lines``; return those the cell should show now, formatted."""
        shown = []
        for line in lines:
            self.lines.append(line)
            if self._shown < self.cap:
                shown.append(format_line(line))
                self._shown += 1
        return shown

    @property
    def held_back(self) -> int:
        """Lines kept but not handed to the cell."""
        return len(self.lines) - self._shown

    def held_back_notice(self) -> str | None:
        """The cell's last line once the map ended, or None if it saw every line."""
        n = self.held_back
        if n == 0:
            return None
        lines = "line" if n == 1 else "lines"
        return (f"... {n} more {lines} of output not shown here (the first {self.cap} "
                f"were); see them all with {HELD_BACK_HINT}")

    def for_item(self, index: int) -> list[Line]:
        """The lines item ``index`` wrote, in order (stdout and stderr, as they arrived)."""
        return [line for line in self.lines if line.index == index]
