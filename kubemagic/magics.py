"""``%%kubemap`` and ``%kubemap``: parse arguments, call the session, nothing else.

Cell magic::

    %%kubemap FUNC ITERABLE [options]
    <cell body: runs locally, then on every engine (and on engines that join later)>

maps FUNC over ITERABLE (any Python expressions, no quotes needed: ``f [1, 4, 9]``,
``f zip(a, b)``, ``lambda x: x + 1 xs``) on the kernel's engines.

Line magic::

    %kubemap FUNC ITERABLE [options]   map a function defined earlier (no cell body)
    %kubemap status            engines, pods, replay log, last map
    %kubemap scale N           resize the fleet (drains before removing engines)
    %kubemap stop              stop engines and controller (the next cell starts anew)
    %kubemap logs [LINES]      recent engine output (pod logs on Kubernetes)
    %kubemap output [ITEM]     what the last map's items printed (all, or one item's)
    %kubemap widget            show the live widget
    %kubemap start [options]   start engines without mapping (same options as the cell)
    %kubemap wait | cancel     wait for / cancel maps started with --background
    %kubemap cache [clear]     the result cache of --cache: where, how big; or empty it
"""

from __future__ import annotations

import difflib
import keyword
import sys
from typing import Any

from IPython.core.error import UsageError as IPythonUsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import (
    argument,
    argument_group,
    magic_arguments,
    parse_argstring,
)

from . import session as session_mod
from . import subcommands
from ._kernel import in_kernel
from .arguments import parse_adapt
from .backends import AUTO, backend_choices
from .backends.options import (
    FLAG_GROUP,
    fleet_conflicts,
    given_options,
    option_flags,
    whole_number,
)
from .errors import CellError, SessionError, UsageError, as_flags
from .magicline import literal_string, split_func_iterable, split_options
from .subcommands import SUBCOMMANDS, USAGE


def engine_options(func: Any) -> Any:
    """Add the backends' engine options to a magic, as a group of its own (like
    ipyparallel's option-group decorators): a backend's new option needs no edit here."""
    for flag in reversed(option_flags()):  # IPython builds the parser bottom-up
        func = argument(*flag.args, **flag.kwargs)(func)
    return argument_group(*FLAG_GROUP)(func)


def line_engine_options(args: Any) -> dict[str, Any]:
    """The engine options a parsed line gives. A quoted value is the text inside the quotes:
    IPython keeps them, and JSON has spaces (``--pod-overrides '{"hostIPC": false}'``)."""
    options = given_options(args)
    for name, value in options.items():
        text = literal_string(value) if isinstance(value, str) else None
        options[name] = value if text is None else text
    return options


@magics_class
class KubeMagics(Magics):
    """The kubemagic magics. See ``%kubemap?``."""

    @magic_arguments()
    @argument("words", nargs="*", help="FUNC ITERABLE (any Python expressions, no quotes "
              "needed), or a line-magic subcommand (status, scale N, ...)")
    @argument("-n", "--engines", type=int, default=None,
              help="number of engines (default 2, or the admin's c.Kubemagic.default_engines, for "
                   "a new session; scales a running one)")
    @argument("--backend", default=None, choices=backend_choices(),
              help="where engines run (default auto: Kubernetes if configured, else local)")
    @argument("--push", default="", help="comma-separated names to send to every engine")
    @argument("--out", default=None, help="store the result list in this variable")
    @argument("--chunksize", default="auto", help="items per task, or 'auto' (adaptive)")
    @argument("--unordered", action="store_true", help="results in completion order")
    @argument("--retries", type=int, default=None,
              help="re-runs of a chunk whose engine died (default: backend's)")
    @argument("--timeout", type=float, default=None, help="give up on the map after S seconds")
    @argument("--no-progress", action="store_true", help="no progress display")
    @argument("--return-exceptions", action="store_true",
              help="put failing items' exceptions in the results instead of raising")
    @argument("--start-timeout", type=float, default=None,
              help="seconds to wait for engines to connect")
    @argument("--cache", nargs="?", const=True, default=None, metavar="DIR",
              help="keep each result on disk as it arrives (default DIR: your cache "
                   "directory); a re-run, even after a crash, computes only what is missing")
    @argument("--adapt", default=None, metavar="MIN:MAX",
              help="follow the work: as many engines as items wait, between MIN and MAX; "
                   "back to MIN when idle (%%kubemap scale N ends it)")
    @argument("--no-speculate", action="store_true",
              help="never run a copy of a straggling chunk (functions with side effects)")
    @argument("--background", action="store_true",
              help="return at once; the results go to --out when the map ends "
                   "(%%kubemap wait / cancel)")
    @argument("--idle-timeout", type=float, default=None,
              help="seconds without a map before a new session's engines are scaled to zero "
                   "(0: never; default 1800 on Kubernetes, off locally)")
    @engine_options
    @line_cell_magic
    def kubemap(self, line: str, cell: str | None = None) -> Any:
        """Map a function over items on ipyparallel engines (local or Kubernetes pods).

        Cell: ``%%kubemap FUNC ITERABLE [options]`` — the cell body runs locally and on
        every engine (imports and definitions included, also on engines that join later),
        then FUNC is mapped over ITERABLE with a load-balanced, adaptive-chunk map.

        Line: ``%kubemap FUNC ITERABLE [options]`` maps a function defined earlier;
        ``%kubemap status | scale N | stop | logs [LINES] | output [ITEM] | widget |
        start [options] | wait | cancel | cache [clear]``.
        """
        parser = self.kubemap.parser
        flags = frozenset(parser._option_string_actions)  # argparse's table of -x/--name
        parts = split_options(line, flags)
        try:
            args = parse_argstring(self.kubemap, parts.options)
        except IPythonUsageError as e:  # argparse's message, plus where to look
            raise UsageError(f"%kubemap: {e}", fix="see %kubemap? for the options") from None
        if args.words:
            raise UsageError(
                f"unexpected {' '.join(args.words)!r} among the options",
                fix="put FUNC and ITERABLE before the options, e.g. %%kubemap f xs -n 4",
            )
        _check_out(args.out)
        words = parts.head.split()
        if cell is None and words and words[0] in SUBCOMMANDS:
            return subcommands.run(words[0], words[1:], start=lambda: self._starting(args),
                                   show=self._show, cache=args.cache)
        if cell is None and not words:
            raise UsageError(
                "%kubemap needs a subcommand, or FUNC and ITERABLE",
                fix=f"use %kubemap {USAGE}, or %kubemap FUNC ITERABLE [options] to map a "
                "function defined earlier",
            )
        if cell is None and len(words) == 1:
            close = difflib.get_close_matches(words[0], SUBCOMMANDS, n=1)
            hint = f"did you mean %kubemap {close[0]}? " if close else ""
            raise UsageError(f"unknown subcommand {words[0]!r}",
                             fix=hint + f"use {USAGE}, or %kubemap FUNC ITERABLE to map")
        func, iterable = split_func_iterable(parts.head)
        return self._map(args, func, iterable, cell or "")

    # -- cell ----------------------------------------------------------------------------
    def _map(self, args: Any, func_expr: str, items_expr: str, cell: str) -> Any:
        """Run the cell body (locally, then on the engines), then map FUNC over ITERABLE."""
        shell = self.shell
        assert shell is not None
        code = shell.transform_cell(cell)
        try:
            # named and cached as IPython names cells, so a traceback shows the user's lines;
            # a blank line first, since the cell's line 1 is the %%kubemap line. IPython
            # counts the running cell before running it: its number is the count minus one
            number = max(shell.execution_count - 1, 0)
            name = shell.compile.cache("\n" + code, number, raw_code=cell)
            compiled = compile("\n" + code, name, "exec")
        except SyntaxError as e:
            raise UsageError(
                f"syntax error in the cell body, line {e.lineno}: {e.msg}",
                fix="fix the cell; nothing was run locally or on the engines",
            ) from None
        pushed = self._lookup_names(args.push)
        session = self._starting(args)
        try:  # locally first: a failing cell never reaches the engines
            exec(compiled, shell.user_ns)
        except Exception as e:  # the user's error, shown from the user's frames on
            raise CellError(e, e.__traceback__.tb_next if e.__traceback__ else None) from None
        if code.strip():
            session.execute(code)
        if pushed:
            session.push(pushed)
        func = self._evaluate(func_expr, "FUNC")
        items = self._evaluate(items_expr, "ITERABLE")
        widget_shown = False
        if in_kernel() and not args.no_progress:
            self._show(session)
            widget_shown = True
        handle = session.map_async(
            func, items, chunksize=args.chunksize, ordered=not args.unordered,
            retries=args.retries, timeout=args.timeout,
            return_exceptions=args.return_exceptions, speculate=not args.no_speculate,
            cache=args.cache,
        )
        handle.name = args.out
        if args.background:
            return _in_background(handle, shell.user_ns, args.out)
        try:
            results = handle.result(progress=not args.no_progress and not widget_shown,
                                    keep=False)
        except KeyboardInterrupt:
            p = handle.progress()
            # what became of engines still running its items: "engine 2 was still ..."
            engines = "".join(f"; {note}" for note in handle.notes)
            raise CellError(KeyboardInterrupt(
                f"the map was interrupted after {p.done} of {p.total} items; the rest was "
                f"cancelled, the engines and pushed data are kept{engines}")) from None
        if args.out:
            shell.user_ns[args.out] = results
            return None
        return results

    def _starting(self, args: Any) -> session_mod.KubeCluster:
        """:meth:`_session`, an interrupt while engines start said in one line."""
        try:
            return self._session(args)
        except KeyboardInterrupt:
            raise CellError(KeyboardInterrupt(
                "interrupted while the engines started; whatever had started is stopped (in "
                "the background if it takes a while), and the next cell starts anew"
            )) from None

    def _session(self, args: Any) -> session_mod.KubeCluster:
        """The kernel's session: reuse it, scale it if -n differs, or start one."""
        options = line_engine_options(args)
        backend = args.backend or AUTO
        if args.engines is not None:
            whole_number(args.engines, "-n/--engines",
                         fix="e.g. -n 4 (to park the fleet without engines: %kubemap scale 0)")
        adapt = parse_adapt(args.adapt) if args.adapt else None
        existing = session_mod.current()
        if existing is not None and existing.state == "running":
            conflicts = ["backend"] if backend not in (AUTO, existing.backend) else []
            conflicts += fleet_conflicts(existing.backend, existing.options, options)
            if conflicts:
                raise SessionError(
                    f"the running engines were started with different {as_flags(conflicts)}",
                    fix="run %kubemap stop first to start a new fleet with these options, "
                    "or drop them to reuse the running one",
                )
            if args.engines is not None and args.engines != existing.n:
                existing.scale(args.engines)
            if adapt:
                existing.adapt(*adapt)
            return existing
        n = args.engines if args.engines is not None or not adapt else max(1, adapt[0])
        session = session_mod.current(
            create=True, n=n, backend=backend,
            retries=args.retries, start_timeout=args.start_timeout,
            idle_timeout=args.idle_timeout, **options,
        )
        if adapt:
            session.adapt(*adapt)
        return session

    def _lookup_names(self, spec: str) -> dict[str, Any]:
        names = [n.strip() for n in spec.split(",") if n.strip()]
        ns = self.shell.user_ns  # type: ignore[union-attr]
        missing = [n for n in names if n not in ns]
        if missing:
            hints = []
            for n in missing:
                close = difflib.get_close_matches(n, [k for k in ns if not k.startswith("_")], 1)
                hints.append(f"{n!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise UsageError(f"--push names not defined in the notebook: {', '.join(hints)}",
                             fix="define them in a cell above, or correct the names")
        return {n: ns[n] for n in names}

    def _evaluate(self, expr: str, what: str) -> Any:
        """Evaluate FUNC/ITERABLE in the notebook. A quoted FUNC is the expression inside
        the quotes (``'lambda x: x + 1'``: a string is never a function); so is a quoted
        ITERABLE holding an expression with spaces (``'(x for x in xs)'``, the quoting
        earlier versions needed); any other quoted ITERABLE is the string itself."""
        ns = self.shell.user_ns  # type: ignore[union-attr]
        text = literal_string(expr)
        if text is not None and (what == "FUNC" or (" " in text.strip() and _parses(text))):
            expr = text
        try:
            return eval(expr, ns)
        except NameError as e:
            name = getattr(e, "name", None) or expr
            close = difflib.get_close_matches(name, [k for k in ns if not k.startswith("_")], 1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UsageError(f"{what} {expr!r}: name {name!r} is not defined",
                             fix=hint + "define it in the cell body or a cell above") from None
        except SyntaxError as e:
            raise UsageError(f"{what} {expr!r} is not a valid expression: {e.msg}",
                             fix="quote it or use a plain name") from None
        except Exception as e:
            raise UsageError(f"evaluating {what} {expr!r} raised {type(e).__name__}: {e}",
                             fix="check the expression in a normal cell first") from None

    @staticmethod
    def _show(session: session_mod.KubeCluster) -> None:
        from IPython.display import display

        if in_kernel():
            display(session.widget)
        else:
            print(repr(session))


def _parses(text: str) -> bool:
    try:
        compile(text, "<kubemap>", "eval")
    except SyntaxError:
        return False
    return True


def _check_out(name: str | None) -> None:
    """``--out`` must name a variable: anything else would store the results nowhere."""
    if name is None or (name.isidentifier() and not keyword.iskeyword(name)):
        return
    raise UsageError(f"--out {name!r} is not a variable name",
                     fix="use a plain Python name, e.g. --out results")


#: background maps that failed since the last cell ran, said at the start of the next one
_failed_in_background: list[tuple[Any, str]] = []


def _in_background(handle: Any, user_ns: dict[str, Any], out: str | None) -> Any:
    """Leave the map running; bind ``out`` to its results when it ends, or say in the next
    cell's output why it failed."""
    def ended(handle: Any) -> None:
        try:
            value = handle.value()
        except Exception as e:  # reported, not raised: nobody waits on this thread
            _failed_in_background.append((handle, (
                f"kubemagic: the background map{f' for {out!r}' if out else ''} failed: "
                f"{type(e).__name__}: {e}")))
            return
        if out:
            user_ns[out] = value

    handle.add_done_callback(ended)
    where = f"the results go to {out!r} when it ends" if out else "the cell's value is its handle"
    print(f"kubemagic: the map runs in the background; {where}. %kubemap wait waits for it "
          "(and raises its error), %kubemap cancel stops it")
    return None if out else handle


def report_background_failures(info: Any = None) -> None:
    """IPython ``pre_run_cell`` hook: background maps that failed are said in the next cell."""
    while _failed_in_background:
        handle, text = _failed_in_background.pop(0)
        if not handle.seen:  # not when %kubemap wait already raised it
            print(text, file=sys.stderr)


def show_error(shell: Any, etype: type, value: BaseException, tb: Any,
               tb_offset: Any = None) -> list[str]:
    """IPython custom-exception hook: a kubemagic error is one clear message, no traceback.

    The user's input was wrong, not the code; a traceback into kubemagic would only hide
    the "how to fix" line.
    """
    if isinstance(value, CellError):  # the user's exception, from the user's frames on
        original = value.original
        stb = shell.InteractiveTB.structured_traceback(
            type(original), original, value.user_traceback, tb_offset=0)
        shell._showtraceback(type(original), original, stb)
        return stb
    text = f"{etype.__name__}: {value}"
    shell._showtraceback(etype, value, [text])
    return [text]

