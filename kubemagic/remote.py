"""Functions that run on engines. Kept import-light: every chunk calls one.

Engines import ``kubemagic`` (it is installed in the engine image and beside local engines),
so these are pickled by reference, not by value: a chunk message carries only the user's
function and the items.

Output of an item is tagged on the wire: while item ``i`` runs, every line it writes to
``sys.stdout``/``sys.stderr`` starts with :func:`item_mark` ``(i)`` — ``"\\x1e"``, the
decimal global item index, ``"\\x1f"`` (the ASCII record/unit separators, which ordinary
text does not contain). ipyparallel forwards the engine's streams live to the client,
where :mod:`kubemagic.itemlog` strips the marks and tells which item wrote which line.
Output written outside an item (the cell body run on the engine, engine logs) has none.

An engine that is told to leave (SIGTERM on Kubernetes: pod deleted, evicted, drained;
see :mod:`kubemagic.k8s.engine`) calls :func:`hand_back_from_now`: from then on every
chunk stops before its next item and hands the items it did not run back to the kernel,
which queues them for other engines. No finished item is lost, none runs twice.
"""

from __future__ import annotations

import contextvars
import os
import socket
import sys
import threading
import time
import traceback
from types import CoroutineType
from typing import Any, Callable, Coroutine, Sequence, TextIO

from .backends import ENGINE_INDEX_ENV

#: starts the mark of an item's line (ASCII "record separator")
MARK_START = "\x1e"
#: ends it, after the decimal item index (ASCII "unit separator")
MARK_END = "\x1f"

#: the fix hint of a result that cannot travel back to the client
_SEND_FIX = ("return plain data (lists, numbers, strings, arrays), not generators, "
             "open files, locks or connections")


#: set once this engine is leaving (see the module docstring); never unset
_leaving = False
#: the running chunk's :class:`_ItemOutput`: :func:`hand_back_from_now` raises its
#: ``pending`` flag, which the chunk loop reads anyway, so a no-op map pays nothing per item
_running: _ItemOutput | None = None
#: items this engine handed back since it began leaving, for its last words
_handed_back_items = 0


def hand_back_from_now() -> None:
    """This engine is leaving: the running chunk stops after its current item, and every
    later chunk hands all its items back at once. Safe to call from a signal handler or
    another thread (it only sets flags); there is no way back, the engine is about to exit."""
    global _leaving
    _leaving = True
    running = _running
    if running is not None:
        running.pending = True


def handed_back_items() -> int:
    """How many items this engine handed back since :func:`hand_back_from_now`."""
    return _handed_back_items


def item_mark(index: int) -> str:
    """The prefix of every line item ``index`` writes (see the module docstring)."""
    return f"{MARK_START}{index}{MARK_END}"


class ItemFailure:
    """An exception raised by one item, in a form that always pickles."""

    __slots__ = ("ename", "evalue", "traceback")

    def __init__(self, ename: str, evalue: str, traceback: str) -> None:
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback

    def __repr__(self) -> str:
        return f"ItemFailure({self.ename}: {self.evalue})"

    def __reduce__(self):
        return (ItemFailure, (self.ename, self.evalue, self.traceback))


def run_chunk(
    func: Callable[..., Any],
    args: Sequence[tuple],
    stop_on_error: bool,
    start: int = 0,
    check_results: bool = False,
) -> tuple[list[Any], int, float, int]:
    """Apply ``func`` to each argument tuple; return
    ``(results, first_failure_offset, seconds, handed_back_offset)``.

    ``start`` is the global index of the chunk's first item: its output lines are marked
    with it (see the module docstring), so the client can say which item printed what.

    A failure — any ``BaseException``, so a ``sys.exit()`` or ``KeyboardInterrupt`` in
    the user's function names its item instead of losing the chunk — is returned as an
    :class:`ItemFailure` in place of the result rather than raised, so the results
    before it are not lost and the client can name the item. With ``stop_on_error`` the
    chunk stops at the first failure (the map will raise anyway).
    ``first_failure_offset`` is -1 when every item succeeded.

    A coroutine (from an ``async def`` function, or returned by an item) is run to
    completion on a private event loop, in a helper thread: the engine's own thread
    already runs a loop, where ``asyncio.run`` refuses to work.

    With ``check_results`` each result is pickled here first, and one that cannot be is
    replaced by an :class:`ItemFailure` naming the item. Off by default, since it pickles
    every result twice; the dispatcher re-sends a chunk with it after ipyparallel failed to
    serialize the chunk's results, which otherwise cannot say which item was at fault.

    ``handed_back_offset`` is -1 when the chunk ran to its end (or stopped at a failure),
    else the offset ``k`` of the first item not run because the engine is leaving
    (:func:`hand_back_from_now`): ``results`` then holds items ``0..k-1`` and the kernel
    queues items ``k..`` again, for another engine, without counting a retry.
    """
    global _handed_back_items, _running
    results: list[Any] = []
    first_failure = -1
    handed_back = -1
    began = time.perf_counter()
    real_out, real_err = sys.stdout, sys.stderr
    output = _running = _ItemOutput(real_out, real_err)
    # read after registering the chunk, so a hand-back in between is not missed
    output.pending = _leaving
    out, err = output.out, output.err
    loop: _LoopThread | None = None
    # The wrappers stay in place from the first item to the last (only this loop runs in
    # between) and the real streams come back in the ``finally``: swapping them around
    # every item would cost a no-op map ~0.1 us per item, about as much as the rest of
    # this loop. An item that replaced them gets them back before the next item runs.
    sys.stdout, sys.stderr = out, err
    try:
        for offset, a in enumerate(args):
            # one slot read per item covers both rare cases: the last item left a line
            # unfinished, or this engine is leaving
            if output.pending:
                output.end_item()
                if _leaving:
                    handed_back = offset
                    _handed_back_items += len(args) - offset
                    break
            output.index = start + offset
            try:
                value = func(*a)
                if isinstance(value, CoroutineType):
                    loop = loop or _LoopThread()
                    value = loop.run(value)
            except BaseException as e:  # noqa: BLE001 - reported to the client, item by item
                value = _failure(e)
            if sys.stdout is not out or sys.stderr is not err:
                sys.stdout, sys.stderr = out, err
            if check_results and type(value) is not ItemFailure:
                value = _sendable(value)
            results.append(value)
            if type(value) is ItemFailure:
                if first_failure < 0:
                    first_failure = offset
                if stop_on_error:
                    break
        if output.pending:
            output.end_item()
    finally:
        _running = None
        sys.stdout, sys.stderr = real_out, real_err
        if loop is not None:
            loop.close()
    return results, first_failure, time.perf_counter() - began, handed_back


def _failure(e: BaseException) -> ItemFailure:
    """``e`` as an :class:`ItemFailure`, its traceback starting at the user's frame (the
    leading frames are this module's: the chunk loop, the event loop helper)."""
    tb = e.__traceback__
    while tb is not None and tb.tb_frame.f_globals.get("__name__") == __name__:
        tb = tb.tb_next
    return ItemFailure(type(e).__name__, str(e),
                       "".join(traceback.format_exception(type(e), e, tb)))


def _sendable(value: Any) -> Any:
    """``value``, or an :class:`ItemFailure` if it cannot be pickled for the trip back.

    cloudpickle at protocol 5 accepts what the engine's serializer accepts (it pickles
    results with protocol 5, by value where needed)."""
    import cloudpickle

    try:
        cloudpickle.dumps(value, protocol=5)
    except Exception as e:  # noqa: BLE001 - any reason it cannot pickle is the same problem
        reason = f"{type(e).__name__}: {e}"
        return ItemFailure(
            type(e).__name__,
            f"the result of this item cannot be sent back: {reason}; {_SEND_FIX}",
            reason)
    return value


class _ItemOutput:
    """The chunk's two tagged streams, and what the chunk loop asks of them per item.

    Kept apart from the streams so the loop's per-item reads and writes are plain slot
    accesses (a stream delegates unknown attributes, which slows every attribute read).
    """

    __slots__ = ("index", "pending", "out", "err")

    def __init__(self, real_out: TextIO, real_err: TextIO) -> None:
        #: the global index of the running item
        self.index = 0
        #: whether something is to be done before the next item: a stream's last line is
        #: unfinished, or the engine is leaving (:func:`hand_back_from_now`)
        self.pending = False
        self.out = _TaggedStream(real_out, self)
        self.err = _TaggedStream(real_err, self)

    def end_item(self) -> None:
        """End the item's unfinished last lines, so the next item's output starts lines
        of its own (with its mark)."""
        self.pending = False
        self.out.end_line()
        self.err.end_line()


class _TaggedStream:
    """Stands in for ``sys.stdout``/``sys.stderr`` while items run: writes through to the
    engine's real stream at once (output stays live), with the running item's mark at
    each line's start.

    Partial writes stay partial: a line is marked once, by the write that starts it.
    """

    __slots__ = ("real", "_item", "_at_line_start", "_lock")

    def __init__(self, real: TextIO, item: _ItemOutput) -> None:
        self.real = real
        self._item = item
        self._at_line_start = True
        # the item's helper threads (and its event loop thread) may write concurrently
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if text:
            mark = item_mark(self._item.index)
            with self._lock:
                marked = text.replace("\n", "\n" + mark)
                if self._at_line_start:
                    marked = mark + marked
                self._at_line_start = text.endswith("\n")
                if self._at_line_start:
                    marked = marked[: len(marked) - len(mark)]
                else:
                    self._item.pending = True
                self.real.write(marked)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self.real.flush()

    def end_line(self) -> None:
        with self._lock:
            if not self._at_line_start:
                self.real.write("\n")
                self._at_line_start = True

    def __getattr__(self, name: str) -> Any:
        # encoding, isatty, fileno, ...: whatever the real stream says
        return getattr(self.real, name)


class _LoopThread:
    """One private event loop in a helper thread, for the coroutines of one chunk.

    A thread of its own because the engine's thread runs ipykernel's loop already (and a
    test or a plain process may not); one loop per chunk rather than per item, so starting
    a loop is paid once, and none is left behind between tasks. The thread runs in a copy
    of the caller's context: ipykernel routes output by a context variable (the request
    being served), and the coroutines see the context variables their caller set.
    """

    def __init__(self) -> None:
        import asyncio

        self._asyncio = asyncio
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=contextvars.copy_context().run, args=(self._loop.run_forever,),
            name="kubemagic-async", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine) -> Any:
        """Run ``coro`` to completion on the loop; return its value or raise its error."""
        future = self._asyncio.run_coroutine_threadsafe(_outcome(coro), self._loop)
        try:
            ok, value = future.result()
        except BaseException:
            future.cancel()  # interrupted while waiting: the item's coroutine stops too
            raise
        if not ok:
            raise value
        return value

    def close(self) -> None:
        """Cancel what the items left running, then stop and close the loop (what
        ``asyncio.run`` does at its end)."""
        self._asyncio.run_coroutine_threadsafe(_cancel_leftovers(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


async def _outcome(coro: Coroutine) -> tuple[bool, Any]:
    """``(True, value)`` or ``(False, exception)``: a ``KeyboardInterrupt`` or
    ``SystemExit`` escaping a task would stop the loop itself, with the result never set."""
    try:
        return True, await coro
    except BaseException as e:  # noqa: BLE001 - re-raised in the chunk's thread
        return False, e


async def _cancel_leftovers() -> None:
    import asyncio

    leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in leftovers:
        task.cancel()
    await asyncio.gather(*leftovers, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_asyncgens()


def joined() -> dict[str, Any]:
    """The first task of every engine: serialize like the kernel does (notebook code by
    value, see :mod:`kubemagic.serialize`), then say who it is (:func:`engine_info`)."""
    from .serialize import use_notebook_pickler

    use_notebook_pickler()
    return engine_info()


def engine_info() -> dict[str, Any]:
    """Who am I: slot index (for draining highest slots first), host (pod name) and pid."""
    index = os.environ.get(ENGINE_INDEX_ENV) or os.environ.get("JOB_COMPLETION_INDEX")
    return {
        "index": int(index) if index not in (None, "") else -1,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
