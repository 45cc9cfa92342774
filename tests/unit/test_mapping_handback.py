"""A leaving engine's hand-back in the map's bookkeeping: the items it finished count, the
rest is queued again as it was — no retry used, no item made suspect — so every item comes
back exactly once and none runs twice."""

from __future__ import annotations

import random

from kubemagic.chunking import ChunkPlanner
from kubemagic.mapping import MapRun


def results_of(chunk, upto=None):
    stop = chunk.stop if upto is None else chunk.start + upto
    return [i * 10 for i in range(chunk.start, stop)]


def test_a_prefix_counts_and_the_rest_is_requeued_without_a_retry():
    # no retries at all: a lost chunk would fail this map, a handed-back one must not
    run = MapRun(10, ChunkPlanner(10, 10), retries=0)
    chunk = run.next_chunk(1, engine=0)
    run.complete(chunk, results_of(chunk, 4), 0.4, clean=True)
    assert run.active and run.done == 4 and run.remaining == 6
    rest = run.next_chunk(1, engine=1)
    assert (rest.start, rest.stop, rest.attempt) == (4, 10, 0)
    assert not run.suspect(rest) and not run.has_suspects
    run.complete(rest, results_of(rest), 0.6, clean=True)
    assert run.results() == [i * 10 for i in range(10)]
    assert run.progress().retried_chunks == 0


def test_a_chunk_handed_back_whole_goes_out_again_whole():
    run = MapRun(6, ChunkPlanner(6, 3), retries=0)
    first, second = run.next_chunk(1, engine=0), run.next_chunk(1, engine=0)
    run.complete(first, [], 0.0, clean=True)  # arrived after the engine began leaving
    again = run.next_chunk(1, engine=1)
    assert (again.start, again.stop, again.attempt) == (0, 3, 0) and not run.suspect(again)
    run.complete(second, [], 0.0, clean=True)
    run.complete(again, results_of(again), 0.3, clean=True)
    last = run.next_chunk(1, engine=1)
    assert (last.start, last.stop) == (3, 6)
    run.complete(last, results_of(last), 0.3, clean=True)
    assert run.state == "done" and run.results() == [i * 10 for i in range(6)]


def test_a_suspect_item_handed_back_still_runs_alone_at_the_same_attempt():
    run = MapRun(4, ChunkPlanner(4, 4), retries=1)
    run.lost(run.next_chunk(1, engine=0), "engine 0 died")
    single = run.next_chunk(1, engine=1)
    assert run.suspect(single) and single.attempt == 1
    run.complete(single, [], 0.0, clean=True)
    again = run.next_chunk(1, engine=2)
    assert (again.start, again.stop, again.attempt) == (0, 1, 1) and run.suspect(again)
    assert run.progress().retried_chunks == 1  # the loss, not the hand-back


def test_a_handed_back_copy_leaves_the_rest_to_its_running_original():
    now = [0.0]
    run = MapRun(16, ChunkPlanner(16, 4), retries=0, clock=lambda: now[0])
    chunks = [run.next_chunk(4, engine=e) for e in range(4)]
    now[0] = 0.1
    for chunk in chunks[:3]:
        run.complete(chunk, results_of(chunk), 0.1, clean=True)
    now[0] = 100.0  # the last one straggles: an idle engine gets a copy
    copy = run.speculative_chunk(engine=0)
    assert copy is not None and copy.speculative and copy.start == chunks[3].start
    assert run.complete(copy, results_of(copy, 1), 0.1, clean=True) == []  # copy's engine left
    assert run.next_chunk(4, engine=1) is None, "the original still runs items 13..15"
    run.complete(chunks[3], results_of(chunks[3]), 100.0, clean=True)
    assert run.state == "done" and run.results() == [i * 10 for i in range(16)]


def test_random_hand_backs_return_and_run_every_item_exactly_once():
    """Engines leave at random points of their chunks; the simulated engines run an item
    only when they return its result, as :func:`kubemagic.remote.run_chunk` does."""
    rng = random.Random(7)
    total = 2000
    run = MapRun(total, ChunkPlanner(total, "auto"), retries=0)
    runs = [0] * total
    out = []
    while run.active:
        while len(out) < 6 and (chunk := run.next_chunk(3)) is not None:
            out.append(chunk)
        chunk = out.pop(rng.randrange(len(out)))
        upto = rng.randrange(len(chunk) + 1) if rng.random() < 0.3 else len(chunk)
        for i in range(chunk.start, chunk.start + upto):
            runs[i] += 1
        run.complete(chunk, results_of(chunk, upto), 0.001 * upto, clean=True)
    assert run.state == "done" and run.results() == [i * 10 for i in range(total)]
    assert runs == [1] * total
    assert run.progress().retried_chunks == 0 and not run.has_suspects
