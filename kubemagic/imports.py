"""``sync_imports``: import locally and on every engine, aliases included.

ipyparallel's ``sync_imports`` drops aliases (``import numpy as np`` binds ``numpy`` on the
engines, so ``np`` is a NameError there). This one watches which names the block bound in
the caller's namespace and writes the import statements that bind the same names.
"""

from __future__ import annotations

import builtins
import contextlib
import sys
import types
from typing import Any, Callable, Iterator


@contextlib.contextmanager
def recorded_imports(frame: Any, send: Callable[[str], None],
                     quiet: bool = False) -> Iterator[None]:
    """Run the ``with`` block, then ``send`` the imports it made in ``frame``'s globals."""
    before = dict(frame.f_globals)
    imported: list[str] = []
    real_import = builtins.__import__

    def recording_import(name: str, globals: Any = None, locals: Any = None,
                         fromlist: Any = (), level: int = 0) -> Any:
        if level == 0 and frame.f_globals is globals:
            imported.append(name)
        return real_import(name, globals, locals, fromlist, level)

    builtins.__import__ = recording_import
    try:
        yield
    finally:
        builtins.__import__ = real_import
    code = import_statements(before, frame.f_globals, imported)
    if code:
        if not quiet:
            print("importing on engines:", "; ".join(code.splitlines()))
        send(code)


def import_statements(before: dict[str, Any], after: dict[str, Any],
                      imported: list[str]) -> str:
    """The import statements that reproduce, on an engine, what a block bound locally."""
    missing = object()
    lines = []
    for name, value in after.items():
        if before.get(name) is value and name in before:
            continue
        if isinstance(value, types.ModuleType):
            mod = value.__name__
            lines.append(f"import {mod}" if mod == name else f"import {mod} as {name}")
            continue
        # prefer the defining module (statistics re-exports fractions.Fraction), then the
        # most recent import
        home = getattr(value, "__module__", None)
        candidates = ([home] if home in imported else []) + list(reversed(imported))
        for mod in dict.fromkeys(candidates):
            source = sys.modules.get(mod)
            if source is not None and getattr(source, name, missing) is value:
                lines.append(f"from {mod} import {name}")
                break
    return "\n".join(lines)
