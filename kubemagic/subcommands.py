"""The line magic's subcommands: ``%kubemap status | scale N | stop | logs | output | ...``.

Each one reads or acts on the kernel's session and prints one short answer; parsing stays in
:mod:`kubemagic.magics`. Subcommands win over notebook names: to map a function called
``status``, write it as an expression, ``%kubemap (status) xs``.
"""

from __future__ import annotations

from typing import Any, Callable

from . import session as session_mod
from .backends.options import whole_number
from .cache import ResultCache
from .errors import CellError, SessionError, UsageError
from .itemlog import format_line

SUBCOMMANDS = ("status", "scale", "stop", "logs", "output", "widget", "start", "wait",
               "cancel", "cache", "forget")
USAGE = ("status | scale N | stop | logs [LINES] | output [ITEM] | widget | start | "
         "wait [NAME] | cancel [NAME] | cache [clear] | forget NAME")
#: how many words each subcommand takes at most
_TAKES = {"scale": 1, "logs": 1, "output": 1, "cache": 1, "wait": 1, "cancel": 1, "forget": 1}


def run(cmd: str, params: list[str], *, start: Callable[[], Any],
        show: Callable[[Any], None], cache: bool | str | None) -> Any:
    """Run subcommand ``cmd``; ``start`` gets or starts the session with the line's options,
    ``show`` displays a session, ``cache`` is the line's ``--cache`` value."""
    if len(params) > _TAKES.get(cmd, 0):
        raise UsageError(
            f"%kubemap {cmd} takes {_TAKES.get(cmd, 0) or 'no'} argument(s), "
            f"not {' '.join(params)!r}",
            fix=f"to map a function named {cmd!r}, write %kubemap ({cmd}) ITERABLE",
        )
    if cmd == "start":
        return show(start())
    if cmd == "widget":
        return show(existing())
    if cmd == "status":
        return print_status()
    if cmd == "stop":
        session = session_mod.current()
        try:
            if session is not None:
                session.stop()
        except KeyboardInterrupt:  # the session is stopped all the same (see teardown.py)
            raise CellError(KeyboardInterrupt(
                "interrupted while stopping: the session is stopped, its engines and controller "
                "go on stopping in the background; the next cell starts a new fleet")) from None
        return print("kubemagic: engines and controller stopped")
    if cmd == "logs":
        return print(existing().logs(tail=int_param(params, "logs LINES", default=200)))
    if cmd == "output":
        return print_output(params)
    if cmd == "scale":
        n = int_param(params, "scale N", default=None)
        existing().scale(n)
        return print(f"kubemagic: {n} engine(s)")
    if cmd == "wait":
        return wait_for_maps(chosen_maps(params, waiting=True))
    if cmd == "cancel":
        running = chosen_maps(params, waiting=False)
        for handle in running:
            handle.cancel()
        return print(f"kubemagic: {len(running)} map(s) cancelled; the engines stay")
    if cmd == "forget":
        if not params:
            raise UsageError("%kubemap forget needs the pushed name to drop",
                             fix="e.g. %kubemap forget weights (%kubemap status lists them)")
        existing().forget(params[0])
        return print(f"kubemagic: {params[0]!r} dropped from the replay log")
    if cmd == "cache":
        return cache_command(params, cache)
    raise AssertionError(f"unhandled subcommand {cmd}")  # SUBCOMMANDS lists the above


def existing() -> Any:
    session = session_mod.current()
    if session is None or session.state != "running":
        raise SessionError("no engines are running in this kernel",
                           fix="run a %%kubemap cell or %kubemap start first")
    return session


def print_status() -> None:
    session = session_mod.current()
    if session is None:
        print("kubemagic: no session in this kernel (a %%kubemap cell starts one)")
        return
    st = session.status()
    print(f"kubemagic {st['cluster_id']}: {st['backend']} backend, {st['state']}, "
          f"{st['ready']}/{st['requested']} engines ready")
    for row in st["engines"]:
        print(f"  slot {row.get('index')}: engine {row.get('engine', '-')} "
              f"{row.get('name', '')} {row.get('state', '')} "
              f"{row.get('phase', '')} {row.get('reason', '')}".rstrip())
    rp = st["replay"]
    pushed = ", ".join(f"{name} ({size / 1e6:.1f} MB)" for name, size in rp["sizes"].items())
    print(f"  replayed to new engines: pushed {pushed or 'nothing'}, "
          f"{rp['code_blocks']} code block(s)")
    if st["map"]:
        m = st["map"]
        extra = f", {m['speculated']} chunk(s) speculated" if m.get("speculated") else ""
        print(f"  last map: {m['done']}/{m['total']} items, {m['state']}{extra}")
    if st.get("running_maps"):
        print(f"  {st['running_maps']} map(s) running (%kubemap wait, %kubemap cancel)")
    if st["notice"]:
        print(f"  {st['notice']}")
    if st["last_error"]:
        print(f"  last error: {st['last_error']}")


def print_output(params: list[str]) -> None:
    """What the last map's items printed: every line, or one item's (``output ITEM``)."""
    handle = existing().current_map
    if handle is None:
        print("kubemagic: no map has run in this session")
        return
    log = handle.output.log
    lines = log.for_item(int_param(params, "output ITEM", default=0)) if params else log.lines
    print("\n".join(format_line(line) for line in lines) or "kubemagic: no output")


def chosen_maps(params: list[str], waiting: bool) -> list[Any]:
    """The running maps (to wait for: also ended ones whose outcome no cell has seen), or
    just the one whose results go to ``--out NAME``."""
    maps = [m for m in existing().maps if not m.done() or (waiting and not m.seen)]
    if not params:
        return maps
    named = [m for m in maps if m.name == params[0]]
    if not named:
        raise UsageError(f"no running map stores its results in {params[0]!r}",
                         fix="%kubemap status shows the running maps; leave NAME out for all")
    return named


def wait_for_maps(running: list[Any]) -> None:
    """Block until the maps ended (progress and output shown); raise the first failure,
    so "Run All" stops at the cell that waits, as at a failing map cell."""
    failures = []
    for handle in running:
        try:
            handle.result(progress=True)
        except Exception as e:
            failures.append(e)
    if failures:
        raise failures[0]
    print(f"kubemagic: {len(running)} map(s) ended" if running else
          "kubemagic: no map is running")


def cache_command(params: list[str], cache: bool | str | None) -> None:
    """``cache``: where the result cache is and what it holds; ``cache clear``: empty it."""
    if params and params[0] != "clear":
        raise UsageError(f"unknown cache action {params[0]!r}",
                         fix="%kubemap cache (show) or %kubemap cache clear [--cache DIR]")
    with ResultCache(None if cache in (None, True) else cache) as store:
        if params:
            store.clear()
            print(f"kubemagic: result cache {store.directory} cleared")
            return
        entries, size = store.stats()
        print(f"kubemagic: result cache {store.directory}: {entries} result(s), "
              f"{size / 1e6:.1f} MB")


def int_param(params: list[str], usage: str, default: int | None) -> int:
    """The subcommand's number (``scale N``, ``logs LINES``, ``output ITEM``)."""
    if not params:
        if default is None:
            raise UsageError(f"missing number in %kubemap {usage}", fix=f"%kubemap {usage}")
        return default
    return whole_number(params[0], f"%kubemap {usage.split()[0]}", minimum=0,
                        fix=f"use %kubemap {usage} with a whole number")
