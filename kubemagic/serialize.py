"""How notebook code travels to engines: cloudpickle, with the engine's namespace kept.

ipyparallel's default pickles a function of ``__main__`` as its code only, so a function
from an earlier cell that uses a global, a helper or a module fails remotely with
``NameError``, and a notebook class cannot be an item at all. Plain cloudpickle fixes that
by value — but gives every function a fresh globals dict: it then ships each global it
uses with *every chunk* (a 1 GB ``--push`` once per chunk) and no longer sees the engine's
namespace (pushes, the cell body's definitions, ``globals()``).

:class:`NotebookPickler` is cloudpickle with one change: a ``__main__`` function is
rebuilt in the engine's own ``__main__`` namespace, into which the globals it uses are
written — except the names the engines already hold (:func:`set_remote_names`: the
pushed ones), which are looked up there. It relies on cloudpickle 3's function reducer
(``_dynamic_function_reduce`` and its helpers; pinned in pyproject.toml).
"""

from __future__ import annotations

import io
import pickle
import sys
from typing import Any

import cloudpickle
from cloudpickle import cloudpickle as _cp

_remote_names: frozenset[str] = frozenset()


def set_remote_names(names: frozenset[str]) -> None:
    """Names every engine already has in its namespace: not shipped with functions."""
    global _remote_names
    _remote_names = frozenset(names)


def main_namespace() -> dict[str, Any]:
    """On the unpickling side: the namespace ``__main__`` functions run in."""
    return sys.modules["__main__"].__dict__


class _MainNamespace:
    """Pickles as "the unpickling process's ``__main__`` namespace"."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (main_namespace, ())


_MAIN = _MainNamespace()


class NotebookPickler(cloudpickle.Pickler):
    """cloudpickle; ``__main__`` functions run in the receiver's ``__main__`` namespace."""

    def _dynamic_function_reduce(self, func: Any) -> Any:
        if func.__module__ != "__main__":
            return super()._dynamic_function_reduce(func)
        code, _, name, defaults, closure = self._function_getnewargs(func)
        state, slotstate = _cp._function_getstate(func)
        slotstate["__globals__"] = {
            k: v for k, v in slotstate["__globals__"].items() if k not in _remote_names
        }
        return (_cp._make_function, (code, _MAIN, name, defaults, closure),
                (state, slotstate), None, None, _cp._function_setstate)


class _Serializer:
    """The ``pickle``-like object ipyparallel's serializer calls (``dumps``/``loads``)."""

    @staticmethod
    def dumps(obj: Any, protocol: int | None = None) -> bytes:
        buffer = io.BytesIO()
        NotebookPickler(buffer, protocol=protocol).dump(obj)
        return buffer.getvalue()

    loads = staticmethod(pickle.loads)


def use_notebook_pickler() -> None:
    """Make ipyparallel serialize with :class:`NotebookPickler` in this process (the
    kernel, and each engine in its first task), as its own ``use_cloudpickle`` does."""
    from ipyparallel.serialize import canning, serialize

    canning.use_cloudpickle()  # drops ipyparallel's own function canning
    serialize.pickle = _Serializer
