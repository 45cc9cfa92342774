"""The map's bookkeeping as pure code: exactly once, in order, retries, fail-fast."""

from __future__ import annotations

import random

import pytest

from kubemagic.errors import RemoteItemError, SessionError
from kubemagic.chunking import ChunkPlanner
from kubemagic.mapping import MapRun
from kubemagic.remote import ItemFailure


def drive(run: MapRun, engines: int, lose_every: int = 0, seed: int = 0) -> int:
    """Simulate engines: take chunks, sometimes lose one (engine died), complete the rest."""
    rng = random.Random(seed)
    steps = 0
    out = []
    while run.active:
        while len(out) < engines * 2:
            c = run.next_chunk(engines)
            if c is None:
                break
            out.append(c)
        if not out:
            break
        c = out.pop(rng.randrange(len(out)))
        steps += 1
        if lose_every and steps % lose_every == 0:
            run.lost(c, "engine died")
        else:
            run.complete(c, [i * 10 for i in range(c.start, c.stop)], 0.001 * len(c))
    return steps


@pytest.mark.parametrize("total", [0, 1, 7, 1000])
@pytest.mark.parametrize("chunksize", ["auto", 1, 33])
def test_every_item_exactly_once_in_order(total, chunksize):
    run = MapRun(total, ChunkPlanner(total, chunksize))
    drive(run, engines=3)
    assert run.state == "done"
    assert run.results() == [i * 10 for i in range(total)]


def test_lost_chunks_are_retried_and_duplicates_dropped():
    run = MapRun(500, ChunkPlanner(500, 10), retries=10)
    drive(run, engines=2, lose_every=3)
    assert run.state == "done" and run.retried_chunks > 0
    assert run.results() == [i * 10 for i in range(500)]
    # a late duplicate of an already completed chunk changes nothing
    before = run.done
    from kubemagic.mapping import Chunk
    run.complete(Chunk(999, 0, 10), ["dup"] * 10, 0.0)
    assert run.done == before and run.results()[0] == 0


def test_out_of_retries_fails_with_advice():
    run = MapRun(10, ChunkPlanner(10, 10), retries=1)
    c = run.next_chunk(1)
    run.lost(c, "engine 0 died")
    c2 = run.next_chunk(1)
    # the items of a lost chunk go out one by one, so a poison item is found alone
    assert (c2.start, c2.stop, c2.attempt) == (0, 1, 1)
    run.lost(c2, "engine 1 died")
    assert run.state == "failed" and isinstance(run.error, SessionError)
    # a poison item is named; retrying more often would not help, so no advice says so
    assert "item 0 (" in str(run.error) and "--retries" not in str(run.error)


def test_a_poison_item_is_isolated_and_named_and_the_rest_completes_first():
    run = MapRun(8, ChunkPlanner(8, 4), retries=1, item_reprs=lambda i: f"<{i}>")
    first, second = run.next_chunk(2), run.next_chunk(2)
    run.complete(second, [4, 5, 6, 7], 0.1)
    run.lost(first, "engine 0 died")  # item 2 kills its engine
    singles = []
    while (c := run.next_chunk(2)) is not None:
        singles.append(c)
    assert [(c.start, c.stop) for c in singles] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    for c in singles:
        if c.start == 2:
            run.lost(c, "engine 1 died")
        elif run.active:
            run.complete(c, [c.start], 0.1)
    assert run.state == "failed"
    assert "item 2 (<2>) was running each time its engine died" in str(run.error)


def test_failing_item_fails_fast_with_its_index():
    run = MapRun(100, ChunkPlanner(100, 10), item_reprs=lambda i: repr(i))
    c = run.next_chunk(2)
    run.complete(c, [0, 1, ItemFailure("ValueError", "bad", "Traceback...")], 0.1)
    assert run.state == "failed"
    assert isinstance(run.error, RemoteItemError) and run.error.index == 2
    with pytest.raises(RemoteItemError, match="item 2"):
        run.results()


def test_return_exceptions_collects_them():
    run = MapRun(3, ChunkPlanner(3, 3), return_exceptions=True)
    run.complete(run.next_chunk(1), [1, ItemFailure("KeyError", "'k'", "tb"), 3], 0.0)
    r = run.results()
    assert r[0] == 1 and r[2] == 3 and isinstance(r[1], RemoteItemError)


def test_unordered_results_follow_completion():
    run = MapRun(4, ChunkPlanner(4, 2), ordered=False)
    a, b = run.next_chunk(2), run.next_chunk(2)
    run.complete(b, ["c", "d"], 0.0)
    run.complete(a, ["a", "b"], 0.0)
    assert run.results() == ["c", "d", "a", "b"]


def test_cancel_stops_assignment():
    run = MapRun(100, ChunkPlanner(100, 10))
    run.next_chunk(1)
    run.cancel()
    assert run.next_chunk(1) is None and run.state == "cancelled"
    with pytest.raises(Exception, match="cancelled"):
        run.results()


def test_auto_chunks_grow_for_fast_items_and_shrink_at_the_tail():
    p = ChunkPlanner(100_000, "auto")
    first = p.size(100_000, 2)
    assert 1 <= first <= 16  # a probe before anything is known
    p.observe(16, 16e-6)  # 1 µs per item
    assert p.size(100_000, 2) == 25_000  # capped by remaining / (2 * engines)
    assert p.size(40, 2) == 10  # the tail shrinks


def test_many_engines_get_chunks_big_enough_for_one_dispatcher():
    p = ChunkPlanner(1_000_000, "auto")
    p.observe(1000, 1e-3)  # 1 µs per item: costs are transport, 2 µs per item
    assert p.size(4_000, 2) == 2_500  # the fixed 5 ms floor: a small fleet as before
    # 64 engines: the tail rule alone would give 7,032; the floor is engines × 2 ms of
    # work (64,000 items), but never more than an even share of the whole map (15,625),
    # and it holds to the end instead of shrinking with what is left
    assert p.size(900_000, 64) == 15_625
    assert p.size(100_000, 64) == 15_625
    assert p.size(10_000, 64) == 10_000
    # slower items: the floor (64 × 2 ms = 16 items of 8 ms) is below the tail rule's share
    slow = ChunkPlanner(100_000, "auto")
    slow.observe(100, 0.8)
    assert slow.size(100_000, 64) == 25  # 0.2 s budget


def test_auto_chunks_follow_the_time_budget_for_slow_items():
    p = ChunkPlanner(200, "auto", target_chunk_seconds=0.1)
    p.observe(1, 0.01)  # 10 ms items
    assert p.size(200, 2) == 10


def test_bad_chunksize_rejected():
    with pytest.raises(ValueError):
        ChunkPlanner(10, 0)


def test_clean_chunks_are_stored_in_one_slice_and_duplicates_still_dropped():
    run = MapRun(10, ChunkPlanner(10, 4), retries=1)
    a, b = run.next_chunk(2), run.next_chunk(2)
    run.complete(b, [40, 50, 60, 70], 0.1, clean=True)
    run.lost(a, "engine 0 died")
    singles = [run.next_chunk(2) for _ in range(4)]
    for c in singles[:2]:
        run.complete(c, [c.start * 10], 0.1, clean=True)
    # the old copy of `a` comes back late, its first two items already done: not one slice
    run.complete(a, [-1, -1, 20, 30], 0.1, clean=True)
    for c in singles[2:]:
        run.complete(c, [c.start * 10], 0.1, clean=True)
    last = run.next_chunk(2)
    run.complete(last, [80, 90], 0.1, clean=True)
    assert run.results() == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90] and run.done == 10
