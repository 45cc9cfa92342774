"""kubemagic: one notebook cell fans a function out over ipyparallel engines.

``%load_ext kubemagic`` registers ``%%kubemap`` / ``%kubemap``; the Python API is
:class:`KubeCluster` and :func:`current`.
"""

from __future__ import annotations

from typing import Any

from .errors import KubemagicError, RemoteItemError, SessionError, StartupError, UsageError

__version__ = "0.1.0"
__all__ = [
    "KubeCluster", "current", "KubemagicError", "RemoteItemError", "SessionError",
    "StartupError", "UsageError", "load_ipython_extension",
]


def __getattr__(name: str) -> Any:
    # lazy: engines import kubemagic.remote for every chunk and must not pay for the
    # session machinery (and `python -m kubemagic._guard` must not pre-import itself)
    if name in ("KubeCluster", "current"):
        from . import session

        return getattr(session, name)
    raise AttributeError(f"module 'kubemagic' has no attribute {name!r}")


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext kubemagic``: register the magics."""
    from .magics import KubeMagics, report_background_failures, show_error

    ipython.register_magics(KubeMagics)
    ipython.set_custom_exc((KubemagicError,), show_error)
    if report_background_failures not in ipython.events.callbacks["pre_run_cell"]:
        ipython.events.register("pre_run_cell", report_background_failures)
