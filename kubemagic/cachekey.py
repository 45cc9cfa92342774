"""Content keys for the result cache: what a map's results depend on, as sha256 digests.

A cached result may be reused only if the same function, seeing the same data, was called
with the same item. The keys therefore hash *what the code does*, never where it came from,
so that a kernel started after a crash finds what the previous one stored:

* a function is hashed by its bytecode, constants (nested code objects included), names,
  flags, defaults, keyword defaults, closure cell values, attributes, and the value of
  every global it references; a notebook function it references is hashed the same way,
  recursively. The code object's file name (``/tmp/ipykernel_1234/5678.py``, new in every
  kernel) and line numbers are left out, so re-running a cell in a new kernel gives the
  same key;
* an importable function, class or module (``np``, ``json.dumps``) is hashed by module,
  name and installed version, not by content: a library is not re-hashed on every run, and
  upgrading it invalidates. A local module without a version is *not* tracked: edit it and
  clear the cache. The mapped function itself is always hashed by content, wherever it
  was defined;
* sets are hashed in a canonical order (their iteration order changes with each process's
  hash seed), dicts, lists and tuples in their own order;
* the replay log (what engines have before they get work) enters the function key by the
  **replay rule**: every executed code block (a cell body, an import run on the engines)
  counts, because it may define anything; a push counts only if it binds a name that the
  function, or a notebook function it reaches, looks up as a global — an engine resolves
  those names to the pushed value, so the key hashes that value (the last push of the
  name), not the kernel's. Only the last occurrence of each code block and of each
  relevant push counts, in log order: re-running a cell appends its body and pushes to the
  log again without changing what the engines hold, and must not invalidate.

Values become bytes with a cloudpickle pickler (protocol 5) writing straight into the hash,
so a large pushed array is not copied.
"""

from __future__ import annotations

import builtins
import dis
import functools
import hashlib
import importlib.metadata
import pickle
import platform
import sys
import types
from typing import Any, Callable, Iterable, Mapping

import cloudpickle
from cloudpickle import cloudpickle as _cp

from .errors import UsageError
from .replay import Entry

#: bump when what goes into a key changes: old entries then stop matching
KEY_FORMAT = 1
#: hex digits of an item key: 128 bits, no collision in any map that fits in memory
ITEM_KEY_HEX = 32
_PROTOCOL = 5
#: exact types whose pickle bytes are the same in every process: items made only of these
#: (inside tuples and lists) skip the cloudpickle pickler, which is ~10x slower per item
_PLAIN_TYPES = frozenset({int, str, float, bytes, bool, complex, type(None)})
_GLOBAL_OPS = frozenset({"LOAD_GLOBAL", "STORE_GLOBAL", "DELETE_GLOBAL", "LOAD_NAME"})


def function_key(func: Callable[..., Any], replay_entries: Iterable[Entry] = ()) -> str:
    """The key of everything ``func``'s results depend on except the item (module doc).

    Raises :class:`UsageError` if a value the function depends on cannot be turned into
    bytes (a lock, an open connection): such a map cannot be cached.
    """
    entries = list(replay_entries)
    pushed = {name for e in entries if e.kind == "push" for name in e.payload}
    hasher = _Hasher(pushed_names=pushed, versions=True)
    what = f"function {getattr(func, '__qualname__', type(func).__name__)}"
    if isinstance(func, types.FunctionType):  # by content even if importable
        parts: Any = ("function",) + hasher.function_token(func)
    else:  # a partial, a bound method, a callable object: its functions are reached inside
        parts = ("callable", hasher.digest(func, what))
    replayed = []
    for step in _relevant_replay(entries, hasher.pushed_used):
        if step[0] == "execute":
            replayed.append(("execute", hashlib.sha256(step[1].encode()).hexdigest()))
        else:
            _, name, value = step
            replayed.append(("push", name, hasher.digest(value, f"pushed value {name!r}")))
    return hasher.digest((KEY_FORMAT, parts, tuple(replayed)), what)


def item_key(args: tuple[Any, ...]) -> str:
    """The key of one item (the argument tuple of one call), stable across processes.

    Raises :class:`UsageError` if the item cannot be turned into bytes.
    """
    if _plain(args):
        return hashlib.sha256(pickle.dumps(args, _PROTOCOL)).hexdigest()[:ITEM_KEY_HEX]
    return _Hasher(pushed_names=(), versions=False).digest(args, "item")[:ITEM_KEY_HEX]


def item_keys(items: Iterable[tuple[Any, ...]]) -> list[str]:
    """:func:`item_key` of each item, in order (the form a map needs)."""
    return [item_key(args) for args in items]


def _plain(value: Any) -> bool:
    """True if ``value``'s plain pickle is process-independent (no sets, no objects)."""
    kind = type(value)
    if kind in _PLAIN_TYPES:
        return True
    if kind is tuple or kind is list:
        return all(map(_plain, value))
    return False


def _relevant_replay(entries: list[Entry], used_names: set[str]) -> list[tuple[Any, ...]]:
    """The replay rule: the last occurrence of each code block and of each push of a used
    name, in log order, as ``("execute", code)`` and ``("push", name, value)``."""
    last: dict[tuple[str, str], tuple[int, tuple[Any, ...]]] = {}
    for position, entry in enumerate(entries):
        if entry.kind == "execute":
            last[("execute", entry.payload)] = (position, ("execute", entry.payload))
        else:
            for name in entry.payload:
                if name in used_names:
                    last[("push", name)] = (position, ("push", name, entry.payload[name]))
    # ties are names of one push: sorted, as a dict's order is not part of the rule
    return [step for _, step in sorted(last.values(), key=lambda v: (v[0], v[1][1]))]


@functools.lru_cache(maxsize=None)
def _distributions() -> Mapping[str, list[str]]:
    """Top-level import name -> installed distributions (a scan of site-packages: once)."""
    return importlib.metadata.packages_distributions()


@functools.lru_cache(maxsize=None)
def module_version(module_name: str) -> str | None:
    """The installed version of the package providing ``module_name``, if known."""
    top = module_name.partition(".")[0]
    if top in sys.stdlib_module_names or top == "builtins":
        return "python " + platform.python_version()
    for dist in _distributions().get(top, []):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    version = getattr(sys.modules.get(top), "__version__", None)
    return str(version) if version is not None else None


def _global_names(code: types.CodeType) -> set[str]:
    """Names ``code`` (and the code nested in it) looks up as globals."""
    names = {ins.argval for ins in dis.get_instructions(code) if ins.opname in _GLOBAL_OPS}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


class _HashWriter:
    """A file for :class:`pickle.Pickler` that feeds a hash instead of storing bytes."""

    def __init__(self, digest: Any) -> None:
        self.write = digest.update


class _Hasher:
    """Digests of values, functions, classes and code for one key computation.

    Keeps the digests of functions and classes it has seen (one global reached twice is
    hashed once) and the ones being hashed, so that recursion (a function calling itself
    through its global name, a method naming its class) ends in a token naming the cycle.
    """

    def __init__(self, pushed_names: Iterable[str], versions: bool) -> None:
        self.pushed_names = frozenset(pushed_names)
        self.versions = versions
        #: pushed names that a hashed notebook function looks up (the replay rule)
        self.pushed_used: set[str] = set()
        self._done: dict[int, str] = {}
        self._active: set[int] = set()
        self._alive: list[Any] = []  # keeps ids in _done from being reused meanwhile

    def digest(self, value: Any, what: str) -> str:
        """sha256 hex digest of ``value``; ``what`` names it in the error message."""
        h = hashlib.sha256()
        try:
            _KeyPickler(_HashWriter(h), self).dump(value)
        except UsageError:
            raise
        except Exception as e:
            raise UsageError(
                f"cannot cache this map: the {what} cannot be turned into bytes "
                f"({type(e).__name__}: {e})",
                fix="run the map without the cache, or make the value picklable "
                "(or push it, if a function uses it as a global)",
            ) from None
        return h.hexdigest()

    def _once(self, obj: Any, compute: Callable[[], str]) -> tuple[str, ...]:
        """A token for ``obj``: its digest, computed once, or a cycle marker."""
        key = id(obj)
        if key in self._done:
            return ("digest", self._done[key])
        if key in self._active:
            return ("cycle", getattr(obj, "__qualname__", ""))
        self._active.add(key)
        try:
            result = compute()
        finally:
            self._active.discard(key)
        self._done[key] = result
        self._alive.append(obj)
        return ("digest", result)

    def function_token(self, func: types.FunctionType) -> tuple[str, ...]:
        """A function by content (module doc)."""
        return self._once(func, lambda: self._function_digest(func))

    def _function_digest(self, func: types.FunctionType) -> str:
        name = func.__qualname__
        in_main = func.__module__ == "__main__"
        referenced = []
        for g in sorted(_global_names(func.__code__)):
            if in_main and g in self.pushed_names:
                self.pushed_used.add(g)  # the engine looks it up in the pushed namespace
                referenced.append((g, "pushed"))
            elif g in func.__globals__:
                value = self.digest(func.__globals__[g], f"global {g!r} of {name}")
                referenced.append((g, "value", value))
            else:
                referenced.append((g, "builtin" if hasattr(builtins, g) else "unbound"))
        cells = []
        for cell in func.__closure__ or ():
            try:
                cells.append(("cell", cell.cell_contents))
            except ValueError:  # a cell not yet assigned
                cells.append(("empty",))
        parts = (name, self.code_digest(func.__code__), func.__defaults__,
                 func.__kwdefaults__, tuple(cells), tuple(referenced), func.__dict__)
        return self.digest(parts, f"function {name} (its defaults or closure)")

    def code_digest(self, code: types.CodeType) -> str:
        """Digest of what a code object does: not its file name or line numbers."""
        parts = (code.co_code, code.co_consts, code.co_names, code.co_varnames,
                 code.co_freevars, code.co_cellvars, code.co_argcount,
                 code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags,
                 code.co_name, getattr(code, "co_qualname", None),
                 getattr(code, "co_exceptiontable", None))
        return self.digest(parts, f"code of {code.co_name}")

    def class_token(self, cls: type) -> tuple[str, ...]:
        """A notebook class by content (name, bases, attributes with methods hashed)."""
        def compute() -> str:
            state = _cp._class_getstate(cls)[0]
            return self.digest((cls.__qualname__, cls.__bases__, state),
                               f"class {cls.__qualname__}")
        return self._once(cls, compute)

    def reference_token(self, obj: Any) -> tuple[Any, ...]:
        """An importable function or class: module, name and (for function keys) version."""
        module = getattr(obj, "__module__", None) or ""
        version = module_version(module) if self.versions and module else None
        return ("ref", module, obj.__qualname__, version)

    def module_token(self, module: types.ModuleType) -> tuple[Any, ...]:
        version = module_version(module.__name__) if self.versions else None
        return ("module", module.__name__, version)


class _KeyPickler(cloudpickle.Pickler):
    """cloudpickle with process-specific parts replaced by stable tokens.

    ``persistent_id`` is the hook that sees every object (``reducer_override`` does not see
    sets, dicts, lists or tuples); what it returns is pickled in the object's place.
    """

    def __init__(self, file: _HashWriter, hasher: _Hasher) -> None:
        super().__init__(file, protocol=_PROTOCOL)
        self.hasher = hasher

    def persistent_id(self, obj: Any) -> Any:
        kind = type(obj)
        if kind in _PLAIN_TYPES or kind is tuple or kind is list or kind is dict:
            return None
        hasher = self.hasher
        if kind is set or kind is frozenset:
            members = sorted(hasher.digest(m, "member of a set") for m in obj)
            return ("set", kind.__name__, tuple(members))
        if kind is types.FunctionType:
            if _cp._should_pickle_by_reference(obj):
                return hasher.reference_token(obj)
            return ("function",) + hasher.function_token(obj)
        if isinstance(obj, type):
            if obj.__module__ == "builtins" or _cp._should_pickle_by_reference(obj):
                return hasher.reference_token(obj)
            return ("class",) + hasher.class_token(obj)
        if kind is types.ModuleType:
            return hasher.module_token(obj)
        if kind is types.CodeType:
            return ("code", hasher.code_digest(obj))
        wrapped = getattr(obj, "__wrapped__", None) if callable(obj) else None
        if isinstance(wrapped, types.FunctionType) and not _cp._should_pickle_by_reference(
                wrapped):
            # a notebook function under a library decorator (functools.cache): the
            # wrapper pickles as a name only, so hash the function it wraps
            return ("wrapped", hasher.reference_token(kind)) + hasher.function_token(wrapped)
        return None
