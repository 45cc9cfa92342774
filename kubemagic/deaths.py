"""Why an engine died, in words that fit the cause, and what to do about it.

When one item kills every engine that runs it (a "poison" item, see
:meth:`kubemagic.mapping.MapRun.lost`), the advice depends on how it killed them: an
engine killed for memory needs more of it; one that crashed in native code or exited
needs a fixed function. Retrying more often helps neither, so no advice here says so.

The backends report what they saw: a local engine process's exit status (negative: the
signal that killed it, as ``psutil`` reports it), or an engine pod's container state (the
kubelet's ``OOMKilled`` with the container's memory limit, or the exit code, 128 + N for
signal N). This module turns either into a :class:`Death`. Pure functions, tested without
engines.
"""

from __future__ import annotations

import signal
from collections.abc import Hashable
from dataclasses import dataclass

from .errors import PoisonItemError

#: signals of a crash inside the process (native code: a C extension, ctypes, a library)
_CRASHES = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE,
                      signal.SIGABRT})
#: what a container's exit code above this means: killed by signal (code - 128)
_SIGNAL_BASE = 128

_CRASH_FIX = ("the function crashes the engine process in native code for this item (a C "
              "extension, ctypes, a library's bug): fix the function for this input")
_EXIT_FIX = ("the function ends the engine process for this item (os._exit(), or a library "
             "calling exit()): fix the function for this input; an exception it raises "
             "instead is reported with its traceback")
_KILL_FIX = ("if the item needs that much memory, run the engines where there is more (on "
             "Kubernetes: --memory), or make the function need less for this item")


@dataclass(frozen=True)
class Death:
    """How one engine ended, as its platform saw it: ``cause`` for the error message,
    ``fix`` the advice that fits it."""

    cause: str
    fix: str
    #: "oom" (killed for memory), "signal" (killed by a signal) or "exit" (exited)
    kind: str

    def __str__(self) -> str:
        return self.cause


def poison_error(number: int, item_repr: str, times: int, reason: str, death: Death | None,
                 engine: Hashable | None = None) -> PoisonItemError:
    """The error naming item ``number`` whose engine died each of ``times`` times it ran,
    the last time on ``engine`` of ``death`` (None: the platform did not say; ``reason`` is
    what the dispatcher saw)."""
    last = f", the last on engine {engine}" if engine is not None else ""
    if death is None:
        cause = f"the engine's death was not explained by its platform ({reason})"
        fix = ("fix the function for this item: it probably runs out of memory (on "
               "Kubernetes: --memory) or crashes in native code; %kubemap logs shows the "
               "engines' last output")
    else:
        cause, fix = death.cause, death.fix
    return PoisonItemError(
        number, item_repr, cause,
        f"item {number} ({item_repr}) was running each time its engine died ({times} "
        f"time(s){last}): {cause}", fix=fix,
        engine_id=engine if isinstance(engine, int) else None)


def of_process(exit_code: int | None) -> Death | None:
    """A local engine process's end from its exit status: ``-N`` when signal N killed it
    (``psutil``'s convention), else its exit code; None when unknown."""
    if not isinstance(exit_code, int):
        return None
    if exit_code < 0:
        return _signalled(-exit_code, "the engine process was killed by")
    return _exited(exit_code)


def of_container(reason: str, exit_code: int | None, memory_limit: str = "") -> Death | None:
    """An engine container's end, from its terminated state: the kubelet's ``reason``
    (``OOMKilled``, ``Error``), the exit code, and the container's memory limit (e.g.
    ``64Mi``, "" when it has none). None when the container has not ended."""
    if reason == "OOMKilled":
        limit = f" of {memory_limit}" if memory_limit else ""
        more = f"more than {memory_limit}" if memory_limit else "a memory limit"
        return Death(
            cause=f"OOMKilled: the engine needed more than its memory limit{limit}",
            fix=f"give the engines {more} (--memory), or make the function need less "
            "memory for this item",
            kind="oom")
    if not isinstance(exit_code, int):
        return None
    if exit_code > _SIGNAL_BASE:
        return _signalled(exit_code - _SIGNAL_BASE,
                          f"the engine process ended with exit code {exit_code}, as when killed by")
    return _exited(exit_code)


def _signalled(number: int, said: str) -> Death:
    try:
        sig = signal.Signals(number)
    except ValueError:
        return Death(f"{said} signal {number}", _EXIT_FIX, "signal")
    text = f"{said} {sig.name} ({signal.strsignal(sig) or sig.name})"
    if sig in _CRASHES:
        return Death(text, _CRASH_FIX, "signal")
    if sig == signal.SIGKILL:
        return Death(text + ": out of memory (the system's OOM killer), or killed by hand",
                     _KILL_FIX, "signal")
    return Death(text, f"find out what sends {sig.name} to the engines (%kubemap logs), or "
                 "fix the function for this item", "signal")


def _exited(code: int) -> Death:
    return Death(f"the engine process exited with code {code}", _EXIT_FIX, "exit")
