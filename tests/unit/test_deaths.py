"""kubemagic.deaths and the poison item in MapRun: the cause named, the advice fitting it."""

from __future__ import annotations

import pytest

from kubemagic.chunking import ChunkPlanner
from kubemagic.deaths import Death, of_container, of_process, poison_error
from kubemagic.errors import PoisonItemError, RemoteItemError, SessionError
from kubemagic.mapping import MapRun


@pytest.mark.parametrize("status,kind,cause,fix", [
    (-11, "signal", "killed by SIGSEGV (Segmentation fault)", "native code"),
    (-6, "signal", "killed by SIGABRT", "native code"),
    (-9, "signal", "killed by SIGKILL", "more"),
    (3, "exit", "exited with code 3", "os._exit()"),
    (0, "exit", "exited with code 0", "os._exit()"),
])
def test_a_local_process_end_is_put_in_words(status, kind, cause, fix):
    death = of_process(status)
    assert death is not None and death.kind == kind
    assert cause in death.cause and fix in death.fix and "--retries" not in death.fix


def test_an_unknown_exit_status_is_no_death():
    assert of_process(None) is None and of_process("unknown") is None  # type: ignore[arg-type]


def test_oom_killed_names_the_memory_limit_and_asks_for_more():
    death = of_container("OOMKilled", 137, "64Mi")
    assert death == Death("OOMKilled: the engine needed more than its memory limit of 64Mi",
                          "give the engines more than 64Mi (--memory), or make the function "
                          "need less memory for this item", "oom")
    without = of_container("OOMKilled", 137, "")
    assert without is not None and "limit" in without.cause and "--memory" in without.fix


@pytest.mark.parametrize("code,words", [
    (139, "exit code 139, as when killed by SIGSEGV"),
    (134, "SIGABRT"),
    (137, "as when killed by SIGKILL"),
    (3, "exited with code 3"),
])
def test_a_container_exit_code_is_read_as_signal_or_exit(code, words):
    death = of_container("Error", code, "1Gi")
    assert death is not None and words in death.cause


def test_a_running_container_is_no_death():
    assert of_container("", None) is None


def test_the_poison_error_is_an_item_error_and_a_session_error():
    error = poison_error(5, "5", 3, "engine 4 died (...)", of_process(-11), 4)
    assert isinstance(error, RemoteItemError) and isinstance(error, SessionError)
    assert (error.index, error.item_repr, error.engine_id) == (5, "5", 4)
    assert str(error).startswith("item 5 (5) was running each time its engine died "
                                 "(3 time(s), the last on engine 4): the engine process was "
                                 "killed by SIGSEGV")
    unknown = poison_error(5, "5", 2, "engine 4 went away (EngineError)", None, 4)
    assert "engine 4 went away" in str(unknown) and "--retries" not in str(unknown)


def poisoned(return_exceptions: bool) -> MapRun:
    """Item 2 of 6 kills its engine each time (retries=1): chunk [0, 3) lost, then item 2
    alone lost again, with the cause the platform reported."""
    run = MapRun(6, ChunkPlanner(6, 3), retries=1, return_exceptions=return_exceptions,
                 item_reprs=lambda i: f"<{i}>")
    first, second = run.next_chunk(2), run.next_chunk(2)
    run.complete(second, [3, 4, 5], 0.1)
    assert not run.blames(first)  # three items: not yet known which one
    run.lost(first, "engine 0 died", of_process(-11), 0)
    while (c := run.next_chunk(2)) is not None:
        if c.start == 2:
            assert run.blames(c)
            run.lost(c, "engine 1 died", of_container("OOMKilled", 137, "64Mi"), 1)
        else:
            run.complete(c, [c.start], 0.1)
    return run


def test_a_poison_item_fails_the_map_with_its_cause():
    run = poisoned(return_exceptions=False)
    assert run.state == "failed" and isinstance(run.error, PoisonItemError)
    assert "item 2 (<2>) was running each time its engine died (2 time(s), the last on " \
           "engine 1): OOMKilled" in str(run.error)
    assert "64Mi (--memory)" in str(run.error)


def test_with_return_exceptions_the_poison_item_is_its_result():
    run = poisoned(return_exceptions=True)
    assert run.state == "done" and run.failures == 1
    results = run.results()
    assert results[:2] == [0, 1] and results[3:] == [3, 4, 5]
    assert isinstance(results[2], PoisonItemError) and results[2].index == 2
    assert "OOMKilled" in str(results[2])


def test_a_lost_chunk_of_several_items_still_fails_the_map_with_return_exceptions():
    run = MapRun(4, ChunkPlanner(4, 4), retries=0, return_exceptions=True)
    run.lost(run.next_chunk(1), "engine 0 died", of_process(-11), 0)
    assert run.state == "failed" and "items 0..3 were lost" in str(run.error)


def test_an_item_queued_behind_the_poison_one_is_not_blamed():
    """One-item chunks pipelined on one engine both die with it: each runs alone after,
    so the item that was only queued is cleared and the poison one named (a past bug
    named the queued item)."""
    run = MapRun(8, ChunkPlanner(8, 1), retries=1, item_reprs=lambda i: f"<{i}>")
    chunks = [run.next_chunk(1) for _ in range(8)]
    for c in chunks[:5]:
        run.complete(c, [c.start], 0.1)
    five, six = chunks[5], chunks[6]  # both on the engine item 5 kills
    run.lost(six, "engine 0 died", of_process(-11), 0)  # reported first
    run.lost(five, "engine 0 died", of_process(-11), 0)
    run.complete(chunks[7], [7], 0.1)
    assert run.active
    retried = [run.next_chunk(1), run.next_chunk(1)]
    assert sorted((c.start, c.stop) for c in retried) == [(5, 6), (6, 7)]
    assert all(run.suspect(c) for c in retried)  # each runs alone on its engine
    for c in sorted(retried, key=lambda c: -c.start):  # item 6 comes back first
        if c.start == 5:
            run.lost(c, "engine 1 died", of_process(-11), 1)
        else:
            run.complete(c, [6], 0.1)
    assert "item 5 (<5>) was running each time" in str(run.error)


def test_without_retries_an_item_not_run_alone_is_not_called_poison():
    run = MapRun(2, ChunkPlanner(2, 1), retries=0)
    run.lost(run.next_chunk(1), "engine 0 died", of_process(-11), 0)
    assert run.state == "failed" and not isinstance(run.error, PoisonItemError)
    assert str(run.error).startswith("item 0 was lost 1 time(s): engine 0 died")


def test_an_item_whose_engine_died_is_never_copied_to_another_engine():
    """A copy of a suspect would put a possible engine killer on a second engine."""
    t = [0.0]
    run = MapRun(4, ChunkPlanner(4, 1), retries=2, clock=lambda: t[0])
    chunks = [run.next_chunk(4, engine=e) for e in range(4)]
    for c in chunks[:3]:
        run.complete(c, [c.start], 0.1)
    run.lost(chunks[3], "engine 3 died", of_process(-9), 3)  # item 3 is a suspect now
    again = run.next_chunk(4, engine=4)
    assert run.suspect(again)
    t[0] = 60.0  # long past any straggler limit
    assert run.speculative_chunk(engine=0) is None
