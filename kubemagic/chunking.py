"""How many items the next chunk of a map gets.

Guided self-scheduling with a time budget: a small probe chunk first, then chunks sized to
take about ``target_chunk_seconds`` at the measured per-item time, but never more than
``remaining / (2 * engines)`` items, so chunks shrink towards the tail and a slow item near
the end cannot hold a large batch hostage. Pure code: the dispatcher reports timings.
"""

from __future__ import annotations

import math


class ChunkPlanner:
    """Decides how many items the next chunk gets.

    ``chunksize`` is an int (fixed) or ``"auto"``. Auto learns the per-item time from the
    seconds each chunk spent on its engine (not the round trip, so transport overhead does
    not make chunks shrink), then sizes chunks by three rules:

    * **budget**: about ``target_chunk_seconds`` of work per chunk, so the fixed cost of a
      chunk (~3 ms of CPU over client, controller and engine, on the engines' cores when
      the machine is small) stays around 1-2%. 0.2 s rather than 0.1 s: fewer messages at
      the same load balance, because the tail rule, not the budget, sizes the last chunks
      (bench/sim_planner.py); it bounds what a cancel waits for and what a lost engine's
      running chunk must redo;
    * **tail**: never more than ``remaining / (2 * engines)`` items (guided
      self-scheduling), so chunks shrink as the map ends and a slow item near the end
      cannot hold a large batch hostage;
    * **floor**: never less than ``MIN_CHUNK_SECONDS`` of work, once the estimate rests on
      that much work or on ``TRUSTED_ITEMS`` items. Without it, a map of fast items ends in
      dozens of tiny round trips (a 10,000-item no-op map ran half as fast). With many
      engines the floor grows to ``engines × DISPATCH_SECONDS``: one dispatcher thread
      serves the whole fleet (a 1M-item no-op map on 64 engines sent 401 chunks and ran at
      31% of the 2-engine rate). It never takes more than an even share of the whole map,
      and it does not shrink with what remains: for items this cheap, the tail rule's
      ever smaller chunks cost the dispatcher more than they balance (a share of what
      remained still made 310 chunks for that map, one of the whole map 128).

    Per-item time is taken as at least ``MIN_ITEM_SECONDS``: the engine-side time of a
    trivial function is far below what the item costs to pickle, send and unpickle, and
    chunk sizes are about the whole cost.
    """

    #: a chunk carries at least this much work (s) once the estimate rests on as much
    MIN_CHUNK_SECONDS = 0.005
    #: lower bound of the cost of one item (s): transport, not just the call
    MIN_ITEM_SECONDS = 2e-6
    #: ... or once it rests on this many items (a probe of a few items is too noisy)
    TRUSTED_ITEMS = 64
    #: seconds of the one dispatcher thread per chunk (send and collect, ~1.3 ms measured):
    #: with many engines a chunk must carry ``engines`` times this much work, or the
    #: dispatcher, not the engines, sets the pace
    DISPATCH_SECONDS = 0.002

    def __init__(
        self,
        total: int,
        chunksize: int | str = "auto",
        target_chunk_seconds: float = 0.2,
        probe_size: int | None = None,
    ) -> None:
        if chunksize != "auto" and (not isinstance(chunksize, int) or chunksize < 1):
            raise ValueError(f"chunksize must be a positive int or 'auto', not {chunksize!r}")
        self.total = total
        self.chunksize = chunksize
        self.target = target_chunk_seconds
        self.probe_size = probe_size
        self.item_seconds: float | None = None
        #: cost observed so far, in engine seconds but at least MIN_ITEM_SECONDS per item
        #: (the floor waits until the estimate rests on that much)
        self.observed_seconds = 0.0
        self.observed_items = 0
        self._seconds = 0.0
        self._items = 0.0

    def observe(self, items: int, seconds: float) -> None:
        """Feed one chunk's engine-side duration into the per-item estimate (EWMA)."""
        if items <= 0:
            return
        self.observed_seconds += max(seconds, items * self.MIN_ITEM_SECONDS)
        self.observed_items += items
        # decayed sums, not an average of per-chunk rates: a chunk weighs by its items, so
        # a small probe's fixed cost (the first call, the unpickling) does not pass for
        # the per-item time of the large chunks after it
        self._seconds = 0.5 * self._seconds + seconds
        self._items = 0.5 * self._items + items
        self.item_seconds = max(self._seconds / self._items, 1e-7)

    def size(self, remaining: int, engines: int) -> int:
        """Items for the next chunk, given ``remaining`` unassigned items."""
        if remaining <= 0:
            return 0
        if self.chunksize != "auto":
            return min(int(self.chunksize), remaining)
        engines = max(engines, 1)
        tail_cap = max(1, math.ceil(remaining / (2 * engines)))
        if self.item_seconds is None:
            probe = self.probe_size or max(1, min(16, self.total // (engines * 64)))
            return min(probe, tail_cap)
        per_item = max(self.item_seconds, self.MIN_ITEM_SECONDS)
        budget = max(1, int(self.target / per_item))
        size = min(budget, tail_cap)
        if (self.observed_seconds >= self.MIN_CHUNK_SECONDS
                or self.observed_items >= self.TRUSTED_ITEMS):
            floor = max(1, int(self.MIN_CHUNK_SECONDS / per_item))
            fleet_floor = min(int(engines * self.DISPATCH_SECONDS / per_item),
                              math.ceil(self.total / engines))
            size = max(size, min(max(floor, fleet_floor), budget))
        return min(size, remaining)
