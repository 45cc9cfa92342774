"""When a running chunk is a straggler worth a second copy: pure rules, no I/O.

At the end of a map the engines run out of work, and the map waits for its slowest chunk.
When that chunk is slow because of its engine (a throttled pod, a busy node, a hung
process) rather than its items, a copy on an idle engine finishes first. Idle engines cost
nothing to use, so :class:`~kubemagic.mapping.MapRun` hands out such copies; this module
only says *which* chunk deserves one and *since when* each chunk runs.

The rule, like kubeface's percentile rule but per item because chunks differ in size (a
probe first, then guided self-scheduling shrinks them towards the tail): a chunk is a
straggler once it has run longer than

    max(FACTOR * len(chunk) * p75, FLOOR_SECONDS)

where ``p75`` is the 75th percentile of seconds per item over the chunks finished so far,
and only once ``MIN_FINISHED`` chunks have finished (fewer say nothing about the spread).

* p75, not the median, so ordinary spread between items is not mistaken for a straggler;
  not the maximum, so one straggler that already finished does not hide the next.
* FACTOR 3: a copy launched at 3x the expected time wins only if the original needs more
  than 4x; below that the copy mostly duplicates work (items that are simply expensive are
  expensive on every engine).
* FLOOR 0.5 s: fast chunks finish within the dispatcher's polling and transport jitter,
  and a copy could save less than it costs to send.

"Ran" is measured the same way for finished and running chunks: wall-clock seconds from
when the chunk could start on its engine to when its result was recorded, transport
included. A chunk sent to an engine that still runs an earlier one is queued there (an
engine runs its tasks in order), so it starts when the chunk ahead of it leaves; without
engine ids a chunk counts as started when sent.
"""

from __future__ import annotations

import math
from bisect import insort
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Hashable, Iterable, Sequence, Sized, TypeVar

if TYPE_CHECKING:
    from .mapping import Chunk

C = TypeVar("C", bound=Sized)


@dataclass
class StragglerRule:
    """Learns seconds per item from finished chunks; judges running ones."""

    factor: float = 3.0
    floor_seconds: float = 0.5
    min_finished: int = 3
    percentile: float = 0.75
    #: seconds per item of each finished chunk, kept sorted for the percentile
    _per_item: list[float] = field(default_factory=list)

    def observe(self, items: int, seconds: float) -> None:
        """Record a finished chunk's ``items`` and how long it ran."""
        if items > 0:
            insort(self._per_item, max(seconds, 0.0) / items)

    def limit(self, items: int) -> float | None:
        """Seconds a chunk of ``items`` may run before it is a straggler; None while too
        few chunks have finished to judge."""
        n = len(self._per_item)
        if n < max(self.min_finished, 1):
            return None
        rank = min(n - 1, max(0, math.ceil(self.percentile * n) - 1))  # nearest rank
        return max(self.factor * items * self._per_item[rank], self.floor_seconds)

    def worst(self, running: Sequence[tuple[C, float]]) -> C | None:
        """Of ``(chunk, seconds it has run)`` pairs, the chunk furthest past its limit
        (relative to it), or None if none is past it. Ties go to the earlier pair."""
        best: C | None = None
        best_ratio = 1.0
        for chunk, ran in running:
            limit = self.limit(len(chunk))
            if limit is None:
                return None
            if ran / limit > best_ratio:
                best, best_ratio = chunk, ran / limit
        return best


@dataclass
class _Flight:
    engine: Hashable | None
    #: when it began running on its engine; None while queued behind another chunk
    started: float | None


class Flights:
    """Which engine each outstanding chunk went to, and since when it runs."""

    def __init__(self) -> None:
        self._by_id: dict[int, _Flight] = {}
        #: per engine, its outstanding chunk ids in the order they were sent
        self._queues: dict[Hashable, list[int]] = {}

    def sent(self, chunk_id: int, engine: Hashable | None, now: float) -> None:
        """A chunk goes to ``engine`` (None: unknown, counts as running at once)."""
        if engine is None:
            self._by_id[chunk_id] = _Flight(None, now)
            return
        queue = self._queues.setdefault(engine, [])
        self._by_id[chunk_id] = _Flight(engine, None if queue else now)
        queue.append(chunk_id)

    def landed(self, chunk_id: int, now: float) -> float | None:
        """Forget a chunk (finished, lost, dropped); return how long it ran, or None if
        unknown. The next chunk queued on its engine starts running now."""
        flight = self._by_id.pop(chunk_id, None)
        if flight is None:
            return None
        if flight.engine is not None:
            queue = self._queues[flight.engine]
            was_head = queue[0] == chunk_id
            queue.remove(chunk_id)
            if not queue:
                del self._queues[flight.engine]
            elif was_head:
                self._by_id[queue[0]].started = now
        return None if flight.started is None else now - flight.started

    def engine(self, chunk_id: int) -> Hashable | None:
        flight = self._by_id.get(chunk_id)
        return flight.engine if flight else None

    def running_for(self, chunk_id: int, now: float) -> float | None:
        """Seconds the chunk has been running, or None while queued (or unknown)."""
        flight = self._by_id.get(chunk_id)
        if flight is None or flight.started is None:
            return None
        return now - flight.started


class Speculation:
    """The copies of one map: which chunks run twice, and which may still be copied.

    At most one copy per chunk, ever: a chunk that has (or is) a copy is never copied
    again, so a range runs at most twice per attempt.
    """

    def __init__(self, rule: StragglerRule) -> None:
        self.rule = rule
        self.flights = Flights()
        self._twin: dict[int, Chunk] = {}  # chunk id -> its other copy, while both are out
        self._copied: set[int] = set()  # ids of chunks that have, or are, a copy
        #: copies sent, and copies that finished while their original still ran
        self.launched = 0
        self.wins = 0

    def straggler(self, out: Iterable[Chunk], now: float,
                  engine: Hashable | None) -> Chunk | None:
        """The outstanding chunk most in need of a copy on ``engine``, or None: running
        (not queued), past the rule's limit, never copied, and not on ``engine`` itself."""
        running = []
        for chunk in out:
            ran = self.flights.running_for(chunk.id, now)
            if (ran is not None and chunk.id not in self._copied
                    and (engine is None or self.flights.engine(chunk.id) != engine)):
                running.append((chunk, ran))
        return self.rule.worst(running)

    def pair(self, original: Chunk, copy: Chunk) -> None:
        """``copy`` of ``original`` was handed out."""
        self._twin[original.id], self._twin[copy.id] = copy, original
        self._copied.update((original.id, copy.id))
        self.launched += 1

    def landed(self, chunk: Chunk, now: float, finished_items: int = 0) -> Chunk | None:
        """``chunk`` is back: finished (with ``finished_items`` results, which teach the
        rule), lost, never sent, or dropped as redundant.

        Returns its other copy if that is still out, forgetting the pair: whatever happens
        to the remaining copy is final, as for any chunk.
        """
        ran = self.flights.landed(chunk.id, now)
        if ran is not None and finished_items:
            self.rule.observe(finished_items, ran)
        twin = self._twin.pop(chunk.id, None)
        if twin is not None:
            self._twin.pop(twin.id, None)
        return twin

    def withdraw(self, copy: Chunk, original: Chunk) -> None:
        """``copy`` never left (call after :meth:`landed`): uncount it, so ``original``
        may be copied again."""
        self._copied.difference_update((copy.id, original.id))
        self.launched -= 1
