"""A map's view of the result cache: which items are already done, and keeping new ones.

With ``cache=`` a map first asks the store (:mod:`kubemagic.cache`) for every item's
result under a key made of the function, what it depends on and the item
(:mod:`kubemagic.cachekey`); only the missing items are sent to the engines, and each
chunk's results are written as the chunk arrives, so a kernel killed mid-map keeps what
had come back. Failures are not cached: they may be transient (a lost node, a full disk).
"""

from __future__ import annotations

import sqlite3
from typing import Any, Callable, Iterable

from .cache import ResultCache
from .cachekey import function_key, item_keys
from .errors import UsageError
from .remote import ItemFailure
from .replay import Entry


def open_cache(cache: bool | str | ResultCache) -> ResultCache:
    """``True``: the user's cache directory; a path: that directory; or a store as is."""
    if isinstance(cache, ResultCache):
        return cache
    return ResultCache(None if cache is True else cache)


def plan(cache: bool | str | ResultCache | None, func: Callable[..., Any],
         args: list[tuple[Any, ...]], replay: Iterable[Entry]
         ) -> tuple["Resume | None", list[tuple[Any, ...]]]:
    """The items still to compute, and the Resume that fills in the rest (or None).

    A function or item that cannot be keyed gets one line saying why, and the map runs
    without the cache rather than failing.
    """
    if cache is None or cache is False:
        return None, args
    try:
        resume = Resume(open_cache(cache), func, args, replay)
        resume.owns_store = not isinstance(cache, ResultCache)
    except UsageError as e:
        print(f"kubemagic: running without the result cache: {e}")
        return None, args
    print(resume.summary())
    return resume, [args[i] for i in resume.todo]


class Resume:
    """The cached and the missing items of one map; stores results as chunks arrive.

    ``args`` are the map's argument tuples; the dispatcher runs :attr:`todo` (indices
    into ``args``) and reports chunks by their offset in that list.
    """

    def __init__(self, store: ResultCache, func: Callable[..., Any],
                 args: list[tuple[Any, ...]], replay: Iterable[Entry]) -> None:
        self.store = store
        self.fkey = function_key(func, replay)
        self.ikeys = item_keys(args)
        self.found = store.get_many(self.fkey, self.ikeys)
        self.todo = [i for i, key in enumerate(self.ikeys) if key not in self.found]
        self.owns_store = False  # opened for this map (closed by finish) or the caller's
        self._storing = True
        self._warned_unpicklable = False

    @property
    def cached(self) -> int:
        """Items answered from the cache."""
        return len(self.ikeys) - len(self.todo)

    def summary(self) -> str:
        return (f"kubemagic: {self.cached} of {len(self.ikeys)} items from the cache "
                f"({self.store.directory}); computing {len(self.todo)}")

    def store_chunk(self, start: int, results: list[Any], say: Callable[[str], None]) -> None:
        """Write a chunk's results (``start``: offset in :attr:`todo`) in one transaction."""
        if not self._storing:
            return
        values = {self.ikeys[self.todo[start + offset]]: value
                  for offset, value in enumerate(results)
                  if not isinstance(value, ItemFailure)}
        try:
            refused = self.store.put_many(self.fkey, values)
        except sqlite3.Error as e:  # disk full, locked for a minute: the map goes on
            self._storing = False
            say(f"kubemagic: the result cache stopped storing ({e}); the map goes on "
                "without it")
            return
        if refused and not self._warned_unpicklable:
            self._warned_unpicklable = True
            say(f"kubemagic: {len(refused)} result(s) of this chunk cannot be pickled and "
                "are not cached (nor are any like them later); a re-run computes them again")

    def finish(self) -> None:
        """The map ended: every chunk is stored; close a store opened for this map."""
        if self.owns_store:
            self.store.close()

    def merge(self, computed: list[Any], ordered: bool) -> list[Any]:
        """All results: cached ones in place (``ordered``), or first (completion order)."""
        if not ordered:
            todo = set(self.todo)
            return [self.found[key] for i, key in enumerate(self.ikeys)
                    if i not in todo] + computed
        results = [self.found.get(key) for key in self.ikeys]
        for i, value in zip(self.todo, computed):
            results[i] = value
        return results

