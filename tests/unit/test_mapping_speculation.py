"""Speculative copies of straggling chunks: one copy at most, first result wins, exactly once.

Time is a fake clock the tests move by hand: no sleeping, no wall-clock assertions.
"""

from __future__ import annotations

import random

import pytest

from kubemagic.errors import RemoteItemError, SessionError
from kubemagic.chunking import ChunkPlanner
from kubemagic.mapping import Chunk, MapRun
from kubemagic.remote import ItemFailure
from kubemagic.speculation import Flights, StragglerRule


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def values(c: Chunk) -> list[int]:
    return [i * 10 for i in range(c.start, c.stop)]


def tail(total: int = 4, **kw) -> tuple[MapRun, Clock, list[Chunk]]:
    """A map of one-item chunks, one per engine, of which all but the last finished
    in 0.1 s: the last one is still running on engine ``total - 1``."""
    clock = Clock()
    run = MapRun(total, ChunkPlanner(total, 1), clock=clock, **kw)
    chunks = [run.next_chunk(total, engine=e) for e in range(total)]
    clock.t = 0.1
    for c in chunks[:-1]:
        assert run.complete(c, values(c), 0.1) == []
    return run, clock, chunks


def test_a_straggler_gets_one_copy_and_only_one():
    run, clock, chunks = tail()
    straggler = chunks[-1]
    clock.t = 0.4  # 0.4 s < floor of 0.5 s
    assert run.speculative_chunk(engine=0) is None
    clock.t = 0.6
    copy = run.speculative_chunk(engine=0)
    assert copy is not None and copy.speculative and copy.id != straggler.id
    assert (copy.start, copy.stop, copy.attempt) == (straggler.start, straggler.stop, 0)
    clock.t = 100.0
    assert run.speculative_chunk(engine=1) is None  # never a second copy
    assert run.progress().speculated == 1
    assert {c.id for c in run.outstanding()} == {straggler.id, copy.id}


def test_no_copy_before_enough_chunks_finished_to_judge():
    clock = Clock()
    run = MapRun(3, ChunkPlanner(3, 1), clock=clock)
    chunks = [run.next_chunk(3, engine=e) for e in range(3)]
    clock.t = 0.1
    for c in chunks[:2]:
        run.complete(c, values(c), 0.1)
    clock.t = 1000.0
    assert run.speculative_chunk(engine=0) is None  # 2 finished chunks: too few


def test_no_copy_while_work_is_pending():
    clock = Clock()
    run = MapRun(10, ChunkPlanner(10, 1), clock=clock)
    chunks = [run.next_chunk(2, engine=e) for e in range(4)]
    clock.t = 0.1
    for c in chunks[:3]:
        run.complete(c, values(c), 0.1)
    clock.t = 1000.0
    assert run.speculative_chunk(engine=0) is None  # engine 0 should take new work


def test_the_limit_scales_with_chunk_size_and_the_p75_item_time():
    rule = StragglerRule()
    for seconds in (0.1, 0.2, 0.3, 0.4):
        rule.observe(10, seconds)  # 10 .. 40 ms per item
    assert rule.limit(10) == pytest.approx(3 * 10 * 0.03)  # p75 of four: the third
    assert rule.limit(1) == 0.5  # the floor
    a, b = Chunk(0, 0, 10), Chunk(1, 10, 12)
    assert rule.worst([(a, 0.8), (b, 0.4)]) is None  # both within their limits
    assert rule.worst([(a, 1.0), (b, 0.5)]) is a  # b is just at its limit
    assert rule.worst([(a, 1.0), (b, 0.7)]) is b  # 0.7 / 0.5 = 1.4 > 1.0 / 0.9: worse


def test_a_queued_chunk_runs_only_once_the_one_ahead_is_back():
    flights = Flights()
    flights.sent(1, "e", 0.0)
    flights.sent(2, "e", 0.0)  # queued behind 1 on the same engine
    assert flights.running_for(1, 5.0) == 5.0 and flights.running_for(2, 5.0) is None
    assert flights.landed(1, 5.0) == 5.0
    assert flights.running_for(2, 7.0) == 2.0
    flights.sent(3, None, 1.0)  # engine unknown: runs from when it was sent
    assert flights.running_for(3, 7.0) == 6.0


def test_no_engine_gets_a_copy_of_its_own_chunk():
    run, clock, chunks = tail()
    clock.t = 10.0
    assert run.speculative_chunk(engine=3) is None  # engine 3 runs the straggler
    assert run.speculative_chunk(engine=2) is not None


def test_copy_wins_and_the_original_is_reported_redundant_once():
    run, clock, chunks = tail(retries=0)
    original = chunks[-1]
    clock.t = 1.0
    copy = run.speculative_chunk(engine=0)
    clock.t = 1.1
    assert run.complete(copy, values(copy), 0.1) == [original]
    assert run.state == "done" and run.results() == [0, 10, 20, 30]
    p = run.progress()
    assert (p.speculated, p.speculation_wins, p.retried_chunks) == (1, 1, 0)
    # the original's late result, or its loss (an abort), changes nothing
    assert run.complete(original, ["late"], 5.0) == []
    run.lost(original, "aborted")
    assert run.state == "done" and run.results() == [0, 10, 20, 30]


def test_original_wins_and_the_copy_is_reported_redundant_once():
    run, clock, chunks = tail(ordered=False)
    original = chunks[-1]
    clock.t = 1.0
    copy = run.speculative_chunk(engine=0)
    clock.t = 1.2
    assert run.complete(original, values(original), 1.2) == [copy]
    assert run.outstanding() == [] and run.progress().speculation_wins == 0
    assert run.complete(copy, ["late"], 0.1) == []
    assert run.results() == [0, 10, 20, 30]  # completion order, the late copy dropped


@pytest.mark.parametrize("first_lost", ["copy", "original"])
def test_loss_of_one_copy_uses_no_attempt(first_lost):
    run, clock, chunks = tail(retries=0)
    original = chunks[-1]
    clock.t = 1.0
    copy = run.speculative_chunk(engine=0)
    gone, survivor = (copy, original) if first_lost == "copy" else (original, copy)
    run.lost(gone, "engine died")
    assert run.active and run.progress().retried_chunks == 0
    assert run.next_chunk(4) is None  # nothing requeued: the survivor covers the items
    clock.t = 100.0
    assert run.speculative_chunk(engine=1) is None  # never a second copy
    assert run.complete(survivor, values(survivor), 1.0) == []
    assert run.state == "done" and run.results() == [0, 10, 20, 30]


def test_loss_of_both_copies_requeues_once_as_one_retry():
    run, clock, chunks = tail(retries=1)
    original = chunks[-1]
    clock.t = 1.0
    copy = run.speculative_chunk(engine=0)
    run.lost(original, "engine 3 died")
    run.lost(copy, "engine 0 died")
    assert run.progress().retried_chunks == 1
    again = run.next_chunk(4, engine=1)
    assert (again.start, again.stop, again.attempt) == (3, 4, 1)
    assert run.next_chunk(4) is None
    run.complete(again, values(again), 0.1)
    assert run.results() == [0, 10, 20, 30]


def test_loss_of_both_copies_without_retries_fails():
    run, clock, chunks = tail(retries=0)
    clock.t = 1.0
    copy = run.speculative_chunk(engine=0)
    run.lost(copy, "engine 0 died")
    run.lost(chunks[-1], "engine 3 died")
    assert run.state == "failed" and isinstance(run.error, SessionError)


def test_off_switch():
    run, clock, _ = tail(speculate=False)
    clock.t = 1000.0
    assert run.speculative_chunk(engine=0) is None
    assert run.progress().speculated == 0


def test_a_failure_from_the_copy_is_real_and_the_original_stays_to_abort():
    run, clock, chunks = tail(item_reprs=repr)
    clock.t = 1.0
    copy = run.speculative_chunk(engine=0)
    assert run.complete(copy, [ItemFailure("ValueError", "bad", "tb")], 0.1) == []
    assert run.state == "failed" and isinstance(run.error, RemoteItemError)
    assert run.error.index == 3
    assert run.outstanding() == [chunks[-1]]


def test_cancel_leaves_both_copies_outstanding_for_the_dispatcher_to_abort():
    run, clock, chunks = tail()
    clock.t = 1.0
    copy = run.speculative_chunk(engine=0)
    run.cancel()
    assert {c.id for c in run.outstanding()} == {chunks[-1].id, copy.id}
    assert run.speculative_chunk(engine=1) is None


def test_a_copy_that_stopped_early_leaves_the_rest_to_the_original():
    clock = Clock()
    run = MapRun(8, ChunkPlanner(8, 2), clock=clock)
    chunks = [run.next_chunk(4, engine=e) for e in range(4)]
    clock.t = 0.1
    for c in chunks[:3]:
        run.complete(c, values(c), 0.1)
    clock.t = 1.0
    original = chunks[-1]
    copy = run.speculative_chunk(engine=0)
    assert run.complete(copy, values(copy)[:1], 0.1) == []  # stopped after one item
    assert run.active and run.next_chunk(4) is None  # the original still covers item 7
    assert run.complete(original, values(original), 1.0) == []
    assert run.results() == [i * 10 for i in range(8)]


def test_a_copy_that_never_left_is_not_counted():
    run, clock, chunks = tail()
    clock.t = 1.0
    copy = run.speculative_chunk(engine=0)
    run.release(copy)
    assert run.progress().speculated == 0 and run.outstanding() == [chunks[-1]]
    assert run.next_chunk(4) is None  # nothing requeued: the original still runs
    again = run.speculative_chunk(engine=1)  # and it may be copied again
    assert again is not None and (again.start, again.stop) == (3, 4)


def test_time_can_be_passed_instead_of_a_clock():
    run = MapRun(4, ChunkPlanner(4, 1), clock=lambda: 0.1)
    chunks = [run.next_chunk(4, now=0.0) for _ in range(4)]
    for c in chunks[:3]:
        run.complete(c, values(c), 0.1)  # ran 0.1 s by the clock
    assert run.speculative_chunk(now=0.4) is None
    assert run.speculative_chunk(now=0.7).start == 3


def simulate(seed: int, ordered: bool) -> MapRun:
    """Three engines, one of them slow, each running its chunks in order; engines die
    now and then (all their chunks are lost), redundant copies are aborted or deliver
    late. Checks at every step that no item is covered by more than two chunks."""
    rng = random.Random(seed)
    clock = Clock()
    total = rng.randrange(1, 120)
    run = MapRun(total, ChunkPlanner(total, rng.choice(["auto", 1, 3, 7])),
                 retries=1000, ordered=ordered, clock=clock)
    engines: dict[int, list[Chunk]] = {e: [] for e in range(3)}
    for _ in range(20_000):
        if not run.active:
            break
        for e, queue in engines.items():
            while len(queue) < 2:
                c = run.next_chunk(len(engines), engine=e)
                if c is None and not queue:
                    c = run.speculative_chunk(engine=e)
                if c is None:
                    break
                queue.append(c)
        cover = [0] * total
        for c in run.outstanding():
            for i in range(c.start, c.stop):
                cover[i] += 1
        assert max(cover, default=0) <= 2
        busy = [e for e, queue in engines.items() if queue]
        clock.t += rng.uniform(0.0, 0.3)
        if not busy:
            continue
        e = rng.choice(busy)
        if e == 0 and rng.random() < 0.8:
            continue  # engine 0 is slow
        if rng.random() < 0.05:
            for c in engines[e]:
                run.lost(c, f"engine {e} died")
            engines[e] = []
            continue
        c = engines[e].pop(0)
        keep = len(c) if rng.random() < 0.9 else rng.randrange(len(c))
        for r in run.complete(c, values(c)[:keep], 0.01 * len(c)):
            if rng.random() < 0.5:  # aborted while queued; else it delivers late
                for queue in engines.values():
                    if r in queue:
                        queue.remove(r)
    assert run.state == "done", (seed, run.state, run.error)
    return run


@pytest.mark.parametrize("ordered", [True, False])
def test_randomized_every_item_exactly_once(ordered):
    copies = 0
    for seed in range(150):
        run = simulate(seed, ordered)
        results = run.results()
        expected = [i * 10 for i in range(run.total)]
        assert (results if ordered else sorted(results)) == expected, seed
        copies += run.progress().speculated
    assert copies > 0  # the simulation did exercise speculation
