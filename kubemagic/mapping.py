"""The map's bookkeeping: what is pending, what is out, what is done — nothing else.

No ipyparallel, no Jupyter, no Kubernetes here: the dispatcher in ``dispatch.py`` feeds this
state machine with completions and engine losses, and asks it for the next chunk. That keeps
the rules that decide correctness (every item exactly once, in order, duplicates from
retried chunks dropped) testable as pure code.

Chunk sizes come from :class:`~kubemagic.chunking.ChunkPlanner`.

Speculation (``speculate=True``, the default) covers the slow *engine* near the end: once
nothing is pending, an idle engine may get a copy of a straggling chunk
(:meth:`MapRun.speculative_chunk`, the rule is in :mod:`kubemagic.speculation`). The first
copy to finish wins and the other is returned by :meth:`MapRun.complete` for the dispatcher
to abort; a late result from it is dropped like any duplicate. Turn it off for functions
with side effects, which would run twice for the copied items.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from .deaths import Death, poison_error
from .errors import RemoteItemError, SessionError
from .chunking import ChunkPlanner
from .speculation import Speculation, StragglerRule

#: sentinel for "no result yet" (None is a valid result)
_MISSING = object()


@dataclass
class Chunk:
    """A contiguous run of item indices ``[start, stop)`` sent to one engine.

    ``speculative`` marks a copy of a straggling chunk (same range, own id).
    """

    id: int
    start: int
    stop: int
    attempt: int = 0
    speculative: bool = False

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass
class Progress:
    """A snapshot for progress displays."""

    done: int
    total: int
    failures: int
    elapsed: float
    retried_chunks: int
    state: str  # "running" | "done" | "failed" | "cancelled"
    speculated: int = 0  # copies of straggling chunks sent
    speculation_wins: int = 0  # copies that finished while their original still ran

    @property
    def rate(self) -> float:
        """Items per second since the map started."""
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate, or None before the first result."""
        if self.done == 0 or self.rate == 0:
            return None
        return (self.total - self.done) / self.rate


@dataclass
class MapRun:
    """State of one map: pending ranges, chunks out, results by item index.

    Time comes from ``clock`` (seconds, monotonic), or from ``now`` where a method takes
    one, so tests can drive speculation without sleeping.
    """

    total: int
    planner: ChunkPlanner
    retries: int = 0
    return_exceptions: bool = False
    ordered: bool = True
    item_reprs: Any = None  # callable index -> short repr, for error messages
    item_numbers: Any = None  # callable index -> the user's item number (a resumed map
    #                           runs only the items missing from the cache)
    speculate: bool = True
    clock: Callable[[], float] = field(default=time.monotonic)
    stragglers: StragglerRule = field(default_factory=StragglerRule)
    _pending: deque = field(default_factory=deque)  # (start, stop, attempt) ranges
    _out: dict[int, Chunk] = field(default_factory=dict)
    _next_id: int = 0
    _results: list = field(default_factory=list)
    _completion_order: list[int] = field(default_factory=list)
    _suspect: set[int] = field(default_factory=set)  # items on engines that died
    _filled: bytearray = field(default_factory=bytearray)  # 1 per item with a result
    _released: bool = False  # results handed over and dropped (hand_over())
    done: int = 0
    failures: int = 0
    retried_chunks: int = 0
    state: str = "running"
    error: BaseException | None = None
    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None
    _spec: Speculation = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._spec = Speculation(self.stragglers)
        self._results = [_MISSING] * self.total
        self._filled = bytearray(self.total)
        if self.total:
            self._pending.append((0, self.total, 0))
        else:
            self._finish("done")

    # -- assignment -------------------------------------------------------------------
    @property
    def remaining(self) -> int:
        """Items not yet assigned to any engine."""
        return sum(stop - start for start, stop, _ in self._pending)

    @property
    def active(self) -> bool:
        return self.state == "running"

    def next_chunk(self, engines: int, now: float | None = None,
                   engine: Hashable | None = None) -> Chunk | None:
        """Take the next chunk to send, or None if nothing is left to assign.

        ``engine`` (any id) is where it goes: with it, a chunk queued behind another on
        the same engine counts as running only once that one is back, and no engine is
        offered a copy of its own chunk.
        """
        if not self.active or not self._pending:
            return None
        start, stop, attempt = self._pending[0]
        # items of a chunk whose engine died go out one by one: if one of them kills its
        # engine (out of memory), it alone is retried, and the error can name it
        size = 1 if start in self._suspect else self.planner.size(self.remaining, engines)
        end = min(stop, start + size)
        if end == stop:
            self._pending.popleft()
        else:
            self._pending[0] = (end, stop, attempt)
        return self._send(Chunk(self._next_id, start, end, attempt), now, engine)

    def speculative_chunk(self, now: float | None = None,
                          engine: Hashable | None = None) -> Chunk | None:
        """A copy of the worst straggler for an idle ``engine``, or None.

        Only while nothing is pending (call it after :meth:`next_chunk` returned None, for
        an engine with nothing in flight), at most one copy per chunk, never a copy of a
        copy, never for the engine running the original. The copy is outstanding like any
        chunk: report it with :meth:`complete`, :meth:`lost` or :meth:`release`.
        """
        if not (self.speculate and self.active) or self._pending:
            return None
        now = self.clock() if now is None else now
        # never a copy of a suspect: it may be what kills engines (see lost())
        original = self._spec.straggler(
            (c for c in self._out.values() if not self.suspect(c)), now, engine)
        if original is None:
            return None
        copy = self._send(Chunk(self._next_id, original.start, original.stop,
                                original.attempt, speculative=True), now, engine)
        self._spec.pair(original, copy)
        return copy

    def _send(self, chunk: Chunk, now: float | None, engine: Hashable | None) -> Chunk:
        self._next_id += 1
        self._out[chunk.id] = chunk
        self._spec.flights.sent(chunk.id, engine, self.clock() if now is None else now)
        return chunk

    def outstanding(self) -> list[Chunk]:
        """Chunks sent and not yet back: what to abort when the map fails or is cancelled
        (both copies of a speculated chunk, if both are out)."""
        return list(self._out.values())

    # -- outcomes ---------------------------------------------------------------------
    def complete(self, chunk: Chunk, results: list[Any], seconds: float,
                 clean: bool = False) -> list[Chunk]:
        """Record a chunk's results. Items already done (a retried duplicate, the late
        copy of a speculated chunk) are dropped.

        ``results`` may be a prefix of the chunk (a leaving engine handed the rest back):
        the rest is queued again at the same attempt.

        Returns the chunks this made redundant (the other copy of a speculated chunk, at
        most one, each returned once): the caller should abort them. Raises nothing: a
        failing item sets ``error`` and ends the map unless ``return_exceptions``; the
        caller checks ``state``. ``clean``: the engine reported no failing item, so a chunk
        none of whose items is done yet is stored in one slice (the common case; the
        per-item loop below was most of the dispatcher's own time on fast maps).
        """
        from .remote import ItemFailure

        self._out.pop(chunk.id, None)
        twin = self._spec.landed(chunk, self.clock(), len(results))
        self.planner.observe(len(results), seconds)
        count, end = len(results), chunk.start + len(results)
        one_slice = clean and self._filled.find(1, chunk.start, end) < 0
        if one_slice:
            self._results[chunk.start:end] = results
            self._filled[chunk.start:end] = b"\x01" * count
            if not self.ordered:
                self._completion_order.extend(range(chunk.start, end))
            self.done += count
        for offset, value in enumerate(() if one_slice else results):
            index = chunk.start + offset
            if self._results[index] is not _MISSING:
                continue  # duplicate from a chunk that was retried or copied
            if isinstance(value, ItemFailure):
                self.failures += 1
                number = index if self.item_numbers is None else self.item_numbers(index)
                err = RemoteItemError(
                    number, self._repr(index), value.ename, value.evalue, value.traceback
                )
                if not self.return_exceptions:
                    self.fail(err)  # the other copy stays outstanding, to be aborted
                    return []
                value = err
            self._results[index] = value
            self._filled[index] = 1
            if not self.ordered:
                self._completion_order.append(index)
            self.done += 1
        redundant = []
        if count < len(chunk):
            # a prefix: its engine is leaving and handed the rest back (or it stopped
            # early without failure). The rest is still to do, by the other copy if one
            # runs, else requeued as it was: no retry used, no item made suspect
            if twin is None and self.active:
                self._requeue_range(chunk.start + len(results), chunk.stop, chunk.attempt)
        elif twin is not None:  # its late result or loss will be ignored
            self._out.pop(twin.id, None)
            self._spec.landed(twin, self.clock())
            redundant.append(twin)
            self._spec.wins += chunk.speculative
        if self.done == self.total and self.active:
            self._finish("done")
        return redundant

    def lost(self, chunk: Chunk, reason: str, death: Death | None = None,
             engine: Hashable | None = None) -> None:
        """The engine running ``chunk`` died: requeue it, or fail after ``retries``.

        Nothing to do when the chunk is no longer outstanding (reported already, or made
        redundant), nor while its other copy still runs: no attempt is used then. Its items
        run alone from now on (:meth:`suspect`), even a single one: it may have waited
        behind the item that killed the engine. A suspect lost past its retries is a
        poison item, named with ``death`` (what ``engine`` died of, see :meth:`blames`):
        the map's error, or with ``return_exceptions`` that item's result.
        """
        if self._out.pop(chunk.id, None) is None:
            return
        if self._spec.landed(chunk, self.clock()) is not None or not self.active:
            return
        if chunk.attempt < self.retries:
            self._suspect.update(range(chunk.start, chunk.stop))
            self.retried_chunks += 1
            self._requeue_range(chunk.start, chunk.stop, chunk.attempt + 1)
            return
        error = self._lost_error(chunk, reason, death, engine)
        if not self.suspect(chunk) or not self.return_exceptions:
            self.fail(error)
            return
        self.failures += 1  # the poison item's result is its error; the map goes on
        self._results[chunk.start], self._filled[chunk.start] = error, 1
        if not self.ordered:
            self._completion_order.append(chunk.start)
        self.done += 1
        if self.done == self.total:
            self._finish("done")

    @property
    def has_suspects(self) -> bool:
        """Whether any chunk's engine died in this map (only then do suspects exist)."""
        return bool(self._suspect)

    def suspect(self, chunk: Chunk) -> bool:
        """Whether ``chunk`` is one item of a chunk whose engine died: it must run alone on
        its engine (nothing queued before or behind it), so a death blames only it."""
        return len(chunk) == 1 and chunk.start in self._suspect

    def blames(self, chunk: Chunk) -> bool:
        """Whether losing ``chunk`` now names its item as a poison item: the caller then
        finds out what the engine died of first (the platform may take a moment to say)."""
        return self.active and self.suspect(chunk) and chunk.attempt >= self.retries

    def item_number(self, index: int) -> int:
        """The user's number of item ``index`` (they differ in a map resumed from a cache)."""
        return index if self.item_numbers is None else self.item_numbers(index)

    def _lost_error(self, chunk: Chunk, reason: str, death: Death | None = None,
                    engine: Hashable | None = None) -> SessionError:
        if self.suspect(chunk):
            return poison_error(self.item_number(chunk.start), self._repr(chunk.start),
                                chunk.attempt + 1, reason, death, engine)
        first, last = self.item_number(chunk.start), self.item_number(chunk.stop - 1)
        what = f"items {first}..{last} were" if last > first else f"item {first} was"
        return SessionError(
            f"{what} lost {chunk.attempt + 1} time(s): {reason}",
            fix="raise --retries (retries=...) or look at the engines' logs "
            "(%kubemap logs) for why they die")

    def release(self, chunk: Chunk) -> None:
        """Take back a chunk that was never sent (its engine vanished): no attempt used.

        A copy that never left is not counted, and its original may be copied again.
        """
        self._out.pop(chunk.id, None)
        twin = self._spec.landed(chunk, self.clock())
        if twin is not None:
            if chunk.speculative:
                self._spec.withdraw(chunk, twin)
            return  # the other copy still runs
        if self.active:
            self._requeue_range(chunk.start, chunk.stop, chunk.attempt)

    def _requeue_range(self, start: int, stop: int, attempt: int) -> None:
        # only items still missing; a retried chunk may have been partly done elsewhere
        runs: list[tuple[int, int]] = []
        i = start
        while i < stop:
            if self._results[i] is _MISSING:
                j = i
                while j < stop and self._results[j] is _MISSING:
                    j += 1
                runs.append((i, j))
                i = j
            else:
                i += 1
        for a, b in reversed(runs):
            self._pending.appendleft((a, b, attempt))

    def fail(self, error: BaseException) -> None:
        if self.active:
            self.error = error
            self._finish("failed")

    def cancel(self, why: str | None = None) -> None:
        """End the map; ``why``: the engines went away (else: a user's cancel)."""
        if self.active:
            from .errors import KubemagicError

            self.error = KubemagicError(
                f"map cancelled after {self.done} of {self.total} items"
                + (f": {why}" if why else ""),
                fix="run the cell again: a new session starts engines" if why else
                "run the cell again; the engines and pushed data are still there",
            )
            self._finish("cancelled")

    def _finish(self, state: str) -> None:
        self.state = state
        self.finished = time.perf_counter()
        self._pending.clear()

    # -- reading ----------------------------------------------------------------------
    def progress(self) -> Progress:
        end = self.finished or time.perf_counter()
        return Progress(
            self.done, self.total, self.failures, end - self.started, self.retried_chunks,
            self.state, self._spec.launched, self._spec.wins,
        )

    def results(self) -> list[Any]:
        """The results, in item order (or completion order when ``ordered=False``)."""
        if self.state != "done":
            raise self.error or SessionError("map is not finished")
        if self._released:
            raise SessionError("this map's results were handed over and are not kept",
                               fix="use the list the map returned (or its --out variable)")
        if self.ordered:
            return self._results  # not copied: 10M results would need twice the memory
        return [self._results[i] for i in self._completion_order]

    def hand_over(self) -> None:
        """The results were handed to the caller: keep no reference, so they go when the
        caller drops them (the session keeps its last map for status and ``wait``)."""
        self._results, self._completion_order, self._released = [], [], True

    def _repr(self, index: int) -> str:
        if self.item_reprs is None:
            return "?"
        text = self.item_reprs(index)
        return text if len(text) <= 80 else text[:77] + "..."
