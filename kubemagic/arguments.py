"""Checks of the session's and the map's own arguments, one clear error each.

Shared by the Python API and the magic (which passes its flags straight through), so a
bad value gets the same message whichever way it arrived.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence, Sized
from typing import Any

from .config import settings
from .errors import UsageError
from .items import SingleItems, single_items


def check_count(value: Any, what: str, minimum: int = 1) -> int:
    """A whole number >= ``minimum`` (not a bool, not a float)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{what} must be a whole number, not {value!r}",
                         fix=f"give an integer >= {minimum}")
    if value < minimum:
        raise UsageError(f"{what} must be at least {minimum}, not {value}",
                         fix=f"give an integer >= {minimum}")
    return value


def check_seconds(value: Any, flag: str, *, zero_ok: bool, fix: str) -> float | None:
    """A number of seconds (``None``: the default); positive, or >= 0 with ``zero_ok``."""
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or value < 0 or (value == 0 and not zero_ok)):
        need = "a number of seconds, 0 or more" if zero_ok else "a positive number of seconds"
        raise UsageError(f"{flag} {value!r} must be {need}", fix=fix)
    return float(value)


def check_session(n: Any, retries: Any, start_timeout: Any, idle_timeout: Any
                  ) -> tuple[int, float | None, float | None]:
    """A new session's own arguments, with the administrator's defaults and limits
    (:mod:`kubemagic.config`): the engine count, start timeout and idle timeout."""
    site = settings()
    target = check_count(site.defaults.default_engines if n is None else n, "n")
    site.check_engines(target)
    start = check_seconds(
        start_timeout, "--start-timeout", zero_ok=False,
        fix="pass e.g. --start-timeout 120 (or leave it out for the backend default)")
    if retries is not None:
        check_count(retries, "retries", minimum=0)
    idle = check_seconds(
        site.defaults.idle_timeout if idle_timeout is None else idle_timeout,
        "--idle-timeout", zero_ok=True,
        fix="e.g. --idle-timeout 1800 (0 keeps idle engines for ever)")
    return target, start, idle


def check_adapt(minimum: Any, maximum: Any) -> tuple[int, int]:
    """Adaptive bounds: whole numbers, 0 <= minimum <= maximum, maximum within the
    administrator's limit."""
    low = check_count(minimum, "the adaptive minimum", minimum=0)
    high = check_count(maximum, "the adaptive maximum", minimum=1)
    if low > high:
        raise UsageError(f"--adapt {low}:{high}: the minimum is above the maximum",
                         fix="give MIN:MAX with MIN <= MAX, e.g. --adapt 0:8")
    settings().check_engines(high)
    return low, high


def parse_adapt(text: str) -> tuple[int, int]:
    """``--adapt MIN:MAX`` from the magic."""
    low, sep, high = text.partition(":")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit():
        raise UsageError(f"--adapt {text!r} is not MIN:MAX",
                         fix="e.g. --adapt 0:8 (between 0 and 8 engines, following the work)")
    return check_adapt(int(low), int(high))


def check_chunksize(value: Any) -> int | str:
    """``"auto"`` or a positive integer (a digit string from the magic counts)."""
    if value == "auto":
        return value
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"chunksize must be a positive integer or 'auto', not {value!r}",
                         fix="use --chunksize auto (the default) or e.g. --chunksize 100")
    return value


def check_names(namespace: dict[Any, Any]) -> dict[str, Any]:
    """Keys of a push: each must be a Python name, or the engines could not bind it."""
    for key in namespace:
        if not isinstance(key, str) or not key.isidentifier():
            raise UsageError(f"cannot push {key!r}: not a valid Python name",
                             fix="use identifiers as keys")
    return namespace


def check_code(code: str) -> str:
    """Code for the engines compiles here first: a syntax error reaches no engine."""
    try:
        compile(code, "<kubemagic>", "exec")
    except SyntaxError as e:
        raise UsageError(
            f"syntax error in the code for the engines, line {e.lineno}: {e.msg}",
            fix="fix the code; nothing was sent to the engines",
        ) from None
    return code


def materialize(iterables: tuple[Iterable[Any], ...]) -> Sequence[tuple[Any, ...]]:
    """The map's argument tuples: zip() of the iterables; of one iterable, a view that
    makes each tuple only when its chunk is sent (:mod:`.items`).

    A non-iterable, or an iterable that raises while it is consumed (a generator that
    fails at item 1,234), gets one error naming the argument and the position, instead of
    the generator's traceback through kubemagic's frames.
    """
    iterators = []
    for i, it in enumerate(iterables):
        try:
            iterators.append(iter(it))
        except TypeError:
            raise UsageError(
                f"argument {i + 1} to map is a {type(it).__name__}, which is not iterable",
                fix="pass a list, range, array or other iterable of items",
            ) from None
    args: list[Any] = []
    try:
        if len(iterables) == 1:
            if isinstance(iterables[0], Sized):  # no copy of a range, tuple or array
                return single_items(iterables[0])
            args.extend(iterators[0])  # keeps the items read before an error
            return SingleItems(args)
        args.extend(zip(*iterators))  # C speed; keeps the rows read before an error
    except Exception as e:
        raise UsageError(
            f"the items could not be read: the iterable raised {type(e).__name__}: {e} "
            f"while producing item {len(args)}",
            fix="fix the iterable (the items before it were fine); nothing was sent to "
            "the engines",
        ) from e
    return args
