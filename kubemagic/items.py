"""The items of a map over one iterable, kept as they came instead of as argument tuples.

Why: a map's items are argument tuples (``func(*args)``), and ``zip()`` of one iterable
makes a 1-tuple per item: 56 bytes of tuple plus the item object itself, for every item,
for as long as the map runs. For ``range(10_000_000)`` that was 840 MB of the kernel's
1.36 GB peak, although a range holds nothing at all. :class:`SingleItems` keeps the
iterable (a range, tuple or NumPy array as is; anything else as one flat list) and makes
the tuples only for the chunk being sent.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, overload

#: Kept as given: immutable (range, tuple, str, bytes), or an array, which a copy would
#: double in memory; a list is copied (8 bytes per item), so the caller may change it.
_KEPT = (range, tuple, str, bytes)


class SingleItems(Sequence):
    """Argument tuples ``(x,)`` for each ``x`` of one sequence, made on demand."""

    __slots__ = ("_items",)

    def __init__(self, items: Sequence[Any]) -> None:
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> tuple[Any]: ...
    @overload
    def __getitem__(self, index: slice) -> list[tuple[Any]]: ...

    def __getitem__(self, index: int | slice) -> tuple[Any] | list[tuple[Any]]:
        if isinstance(index, slice):
            return [(x,) for x in self._items[index]]
        return (self._items[index],)

    def __iter__(self) -> Iterator[tuple[Any]]:
        return ((x,) for x in self._items)


def single_items(iterable: Any) -> SingleItems:
    """The items of the one iterable of a map; a generator is read to the end here (errors
    while reading it are the caller's to report)."""
    if isinstance(iterable, _KEPT) or _is_array(iterable):
        return SingleItems(iterable)
    return SingleItems(list(iterable))


def _is_array(value: Any) -> bool:
    """A NumPy array with at least one dimension, without importing NumPy."""
    kind = type(value)
    return kind.__name__ == "ndarray" and kind.__module__ == "numpy" and value.ndim >= 1
