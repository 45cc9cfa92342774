"""The engine side of a chunk, run in-process: output tagged by item, failures of any
kind named by item, coroutines run to completion, unsendable results named, and the items
a leaving engine did not run handed back."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import io
import os
import pickle
import signal
import sys
import threading

import pytest

from kubemagic import remote
from kubemagic.itemlog import Line, TaskOutput
from kubemagic.remote import ItemFailure, item_mark, run_chunk


@contextlib.contextmanager
def engine_streams():
    """The engine's real streams, as plain buffers (set in the test's body: pytest's own
    capture replaces sys.stdout between a fixture's setup and the test)."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        yield out, err
    finally:
        sys.stdout, sys.stderr = saved


def lines_of(text: str, stream: str = "stdout") -> list[Line]:
    task = TaskOutput()
    return task.feed(0, stream, text) + task.flush()


# -- output tagged by item -------------------------------------------------------------
def chatty(x):
    print(f"item says {x}")
    sys.stdout.write("partial ")
    sys.stdout.write("line\nand two\nmore lines\n")
    sys.stderr.write(f"warn {x}\n")
    sys.stdout.write("no newline at the end")
    return x


def test_every_line_starts_with_the_items_global_index():
    with engine_streams() as (out, err):
        print("before the chunk")
        results, first_failure, _, handed_back = run_chunk(chatty, [(1,), (2,)], True, 40)
        print("after the chunk")
    assert results == [1, 2] and first_failure == -1 and handed_back == -1
    m40, m41 = item_mark(40), item_mark(41)
    assert out.getvalue() == (
        "before the chunk\n"
        f"{m40}item says 1\n{m40}partial line\n{m40}and two\n{m40}more lines\n"
        f"{m40}no newline at the end\n"
        f"{m41}item says 2\n{m41}partial line\n{m41}and two\n{m41}more lines\n"
        f"{m41}no newline at the end\n"
        "after the chunk\n")
    assert err.getvalue() == f"{m40}warn 1\n{m41}warn 2\n"


def test_the_parser_reads_back_what_the_items_wrote():
    with engine_streams() as (out, err):
        run_chunk(chatty, [(1,), (2,)], True, 7)
    lines = lines_of(out.getvalue())
    assert [(line.index, line.text) for line in lines[:6]] == [
        (7, "item says 1"), (7, "partial line"), (7, "and two"), (7, "more lines"),
        (7, "no newline at the end"), (8, "item says 2")]
    assert lines_of(err.getvalue(), "stderr") == [
        Line(7, 0, "stderr", "warn 1"), Line(8, 0, "stderr", "warn 2")]


def test_empty_lines_and_writelines_are_marked_too():
    def f(x):
        sys.stdout.write("\n\n")
        sys.stdout.writelines(["a", "b\n"])
        return x

    with engine_streams() as (out, _):
        run_chunk(f, [(0,)], True, 3)
    assert [(line.index, line.text) for line in lines_of(out.getvalue())] == [
        (3, ""), (3, ""), (3, "ab")]


def test_streams_are_restored_after_each_item_even_when_it_fails():
    seen = []

    def f(x):
        seen.append(sys.stdout.real)  # the wrapper writes to the chunk's real stream
        print(x)
        sys.stdout = sys.stderr = io.StringIO()  # a careless item, then it fails
        raise ValueError(x)

    with engine_streams() as (out, err):
        results, first_failure, _, _ = run_chunk(f, [(1,), (2,)], False, 0)
        assert sys.stdout is out and sys.stderr is err
    assert seen == [out, out]
    assert [r.ename for r in results] == ["ValueError", "ValueError"] and first_failure == 0
    assert [(line.index, line.text) for line in lines_of(out.getvalue())] == [(0, "1"), (1, "2")]


def test_non_text_writes_fail_like_a_real_stream():
    def f(x):
        sys.stdout.write(b"bytes")

    (failure,), _, _, _ = run_chunk(f, [(0,)], True)
    assert failure.ename == "TypeError" and "must be str, not bytes" in failure.evalue


# -- failures ---------------------------------------------------------------------------
class Custom(BaseException):
    pass


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(3), Custom("mine")])
def test_base_exceptions_become_the_items_failure(exc):
    def boom(x):
        if x == 1:
            raise exc
        return x

    results, first_failure, _, _ = run_chunk(boom, [(0,), (1,), (2,)], False)
    assert results[0] == 0 and results[2] == 2 and first_failure == 1
    failure = results[1]
    assert isinstance(failure, ItemFailure) and failure.ename == type(exc).__name__
    assert failure.evalue == str(exc)
    assert "in boom" in failure.traceback and "kubemagic/remote.py" not in failure.traceback
    assert pickle.loads(pickle.dumps(failure)).ename == failure.ename


def test_stop_on_error_stops_at_the_first_failure():
    def f(x):
        if x == 1:
            raise SystemExit
        return x

    results, first_failure, _, _ = run_chunk(f, [(0,), (1,), (2,)], True)
    assert len(results) == 2 and first_failure == 1


# -- coroutines ---------------------------------------------------------------------------
async def twice(x):
    await asyncio.sleep(0)
    print(f"async {x}")
    return 2 * x


def test_async_functions_run_to_completion_without_a_running_loop():
    with engine_streams() as (out, _):
        results, first_failure, _, _ = run_chunk(twice, [(1,), (2,)], True, 5)
    assert results == [2, 4] and first_failure == -1
    # printed from the loop's helper thread, still marked with the item
    assert [(line.index, line.text) for line in lines_of(out.getvalue())] == [
        (5, "async 1"), (6, "async 2")]


def test_async_functions_run_inside_a_running_loop():
    async def engine_thread():  # an ipykernel engine runs tasks in its loop's thread
        asyncio.get_running_loop()
        return run_chunk(twice, [(1,), (2,)], True, 0)

    results, _, _, _ = asyncio.run(engine_thread())
    assert results == [2, 4]


def test_an_item_that_returns_a_coroutine_is_awaited():
    results, _, _, _ = run_chunk(lambda x: twice(x), [(3,)], True)
    assert results == [6]


def test_async_failures_of_any_kind_name_the_item():
    async def aboom(x):
        await asyncio.sleep(0)
        if x == 0:
            raise ValueError("bad 0")
        if x == 1:
            raise SystemExit("exit 1")
        if x == 2:
            raise KeyboardInterrupt
        return x

    results, first_failure, _, _ = run_chunk(aboom, [(0,), (1,), (2,), (3,)], False)
    assert [getattr(r, "ename", r) for r in results] == [
        "ValueError", "SystemExit", "KeyboardInterrupt", 3]
    assert first_failure == 0 and results[1].evalue == "exit 1"
    assert "in aboom" in results[0].traceback and "kubemagic/remote.py" not in results[0].traceback


def test_coroutines_see_the_callers_context_and_leave_nothing_running():
    request = contextvars.ContextVar("request")  # ipykernel routes output like this
    request.set("task 1")
    started = []

    async def f(x):
        started.append(asyncio.create_task(asyncio.sleep(3600)))  # left running
        return request.get()

    results, _, _, _ = run_chunk(f, [(0,), (1,)], True)
    assert results == ["task 1", "task 1"]
    assert all(task.cancelled() for task in started)
    assert not any(t.name == "kubemagic-async" for t in threading.enumerate())


# -- results that cannot be sent back ------------------------------------------------------
class Unpicklable:
    def __reduce__(self):
        raise TypeError("cannot pickle 'Unpicklable' object")


def gen(x):
    return (i for i in range(x))


def test_check_results_names_the_item_whose_result_cannot_be_sent():
    results, first_failure, _, _ = run_chunk(
        lambda x: gen(x) if x == 1 else threading.Lock() if x == 2 else x,
        [(0,), (1,), (2,)], False, 0, True)
    assert results[0] == 0 and first_failure == 1
    generator, lock = results[1], results[2]
    assert generator.ename == "TypeError"
    assert generator.evalue.startswith(
        "the result of this item cannot be sent back: "
        "TypeError: cannot pickle 'generator' object")
    assert "not generators" in generator.evalue
    assert "cannot pickle '_thread.lock' object" in lock.evalue
    assert pickle.loads(pickle.dumps(generator)).evalue == generator.evalue


def test_check_results_stops_on_error_and_keeps_good_results():
    results, first_failure, _, _ = run_chunk(
        lambda x: Unpicklable() if x else [x, "plain"], [(0,), (1,), (2,)], True, 0, True)
    assert results[0] == [0, "plain"] and first_failure == 1 and len(results) == 2


def test_results_are_not_pickled_unless_asked():
    results, first_failure, _, _ = run_chunk(lambda x: Unpicklable(), [(0,)], True)
    assert isinstance(results[0], Unpicklable) and first_failure == -1


# -- a leaving engine hands back what it did not run ------------------------------------
@pytest.fixture
def leaving_engine(monkeypatch):
    """SIGTERM does what the engine pods' entrypoint makes it do (kubemagic.k8s.engine):
    mark the engine as leaving. The flag is process-wide: put it back afterwards."""
    monkeypatch.setattr(remote, "_leaving", False)
    monkeypatch.setattr(remote, "_handed_back_items", 0)
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: remote.hand_back_from_now())
    yield
    signal.signal(signal.SIGTERM, previous)


def test_sigterm_mid_chunk_finishes_the_item_and_hands_back_the_rest(leaving_engine):
    ran = []

    def f(x):
        ran.append(x)
        print(f"item {x}")
        if x == 11:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while this item runs
        return x * 10

    with engine_streams() as (out, _):
        results, first_failure, _, handed_back = run_chunk(
            f, [(x,) for x in range(10, 15)], True, 100)
    assert ran == [10, 11], "items after the signal must not run"
    assert results == [100, 110] and first_failure == -1
    assert handed_back == 2, "the kernel requeues items from offset 2 on"
    assert remote.handed_back_items() == 3
    assert [line.index for line in lines_of(out.getvalue())] == [100, 101]


def test_a_chunk_arriving_after_the_signal_hands_back_every_item(leaving_engine):
    os.kill(os.getpid(), signal.SIGTERM)
    ran = []
    results, first_failure, _, handed_back = run_chunk(ran.append, [(1,), (2,), (3,)], True)
    assert (results, first_failure, handed_back, ran) == ([], -1, 0, [])
    assert remote.handed_back_items() == 3


def test_a_hand_back_keeps_the_failures_before_it(leaving_engine):
    """With return_exceptions the chunk goes on after a failure: the failed item is a
    result like any other, reported with the hand-back."""
    def f(x):
        if x == 0:
            raise ValueError("bad item")
        remote.hand_back_from_now()  # as a signal handler would, from this thread
        return x

    results, first_failure, _, handed_back = run_chunk(f, [(0,), (1,), (2,)], False)
    assert first_failure == 0 and results[0].ename == "ValueError"
    assert results[1:] == [1] and handed_back == 2


def test_a_hand_back_from_another_thread_lands_between_items(leaving_engine):
    started = threading.Event()
    release = threading.Event()

    def f(x):
        started.set()
        assert release.wait(10)
        return x

    thread = threading.Thread(target=lambda: (started.wait(10), remote.hand_back_from_now(),
                                              release.set()))
    thread.start()
    results, _, _, handed_back = run_chunk(f, [(0,), (1,)], True)
    thread.join()
    assert (results, handed_back) == ([0], 1)
