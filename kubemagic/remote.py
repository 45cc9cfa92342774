"""Functions that run on engines. Kept tiny and import-light: every chunk calls one.

Engines import ``kubemagic`` (it is installed in the engine image and beside local engines),
so these are pickled by reference, not by value: a chunk message carries only the user's
function and the items.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from typing import Any, Callable, Sequence

from .backends import ENGINE_INDEX_ENV


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
    func: Callable[..., Any], args: Sequence[tuple], stop_on_error: bool
) -> tuple[list[Any], int, float]:
    """Apply ``func`` to each argument tuple; return (results, first_failure_offset, seconds).

    A failure is returned as an :class:`ItemFailure` in place of the result rather than
    raised, so the results before it are not lost and the client can name the item.
    With ``stop_on_error`` the chunk stops at the first failure (the map will raise anyway).
    ``first_failure_offset`` is -1 when every item succeeded.
    """
    results: list[Any] = []
    first_failure = -1
    start = time.perf_counter()
    for offset, a in enumerate(args):
        try:
            results.append(func(*a))
        except Exception as e:  # noqa: BLE001 - reported to the client, item by item
            # from the user's frame on: the run_chunk frame is kubemagic's, not theirs
            tb = "".join(traceback.format_exception(type(e), e, e.__traceback__.tb_next))
            results.append(ItemFailure(type(e).__name__, str(e), tb))
            if first_failure < 0:
                first_failure = offset
            if stop_on_error:
                break
    return results, first_failure, time.perf_counter() - start


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
