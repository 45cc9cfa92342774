"""Errors users see. Each says what was wrong and how to fix it, in one message.

The magic catches :class:`KubemagicError` and prints it without a traceback (the user's
input was wrong, not our code), so the kernel stays alive and the session stays usable.
"""

from __future__ import annotations

from typing import Any


def as_flags(option_names: list[str]) -> str:
    """``["image", "start_timeout"]`` -> ``"--image, --start-timeout"``: errors name options
    the way the user typed them in the magic."""
    return ", ".join("--" + name.replace("_", "-") for name in option_names)


class KubemagicError(Exception):
    """Base class: a problem the user can fix. ``fix`` says how."""

    def __init__(self, message: str, fix: str = "") -> None:
        self.message = message
        self.fix = fix
        super().__init__(self.__str__())

    def __str__(self) -> str:
        if self.fix:
            return f"{self.message}\n  how to fix: {self.fix}"
        return self.message


class CellError(KubemagicError):
    """The user's own code failed (the cell body), or the user interrupted: shown as that
    exception with the user's frames only (``user_traceback``), never kubemagic's."""

    def __init__(self, original: BaseException, user_traceback: Any = None) -> None:
        self.original = original
        self.user_traceback = user_traceback
        super().__init__(f"{type(original).__name__}: {original}")


class UsageError(KubemagicError):
    """Bad arguments or options (names that do not exist, -n 0, --memory 1XB, ...)."""


class SessionError(KubemagicError):
    """The session is not in a state that allows the request (map after stop, ...)."""


class StartupError(KubemagicError):
    """Engines did not come up in time; the message quotes what the platform said."""


class PermissionDenied(KubemagicError):
    """The Kubernetes API answered 403; the message names the verb and resource."""


class RemoteItemError(KubemagicError):
    """An item of a map raised on an engine.

    Like ipyparallel's ``RemoteError``, it carries the remote exception's type name,
    message and traceback text, plus the index and repr of the failing item.
    """

    def __init__(
        self,
        index: int,
        item_repr: str,
        ename: str,
        evalue: str,
        traceback: str,
        engine_id: int | None = None,
    ) -> None:
        self.index = index
        self.item_repr = item_repr
        self.ename = ename
        self.evalue = evalue
        self.remote_traceback = traceback
        self.engine_id = engine_id
        where = f" on engine {engine_id}" if engine_id is not None else ""
        super().__init__(
            f"item {index} ({item_repr}) raised {ename}: {evalue}{where}\n"
            f"--- remote traceback ---\n{traceback.rstrip()}",
            fix="fix the function for this input, or pass --return-exceptions "
            "(return_exceptions=True) to collect exceptions as results",
        )


class PoisonItemError(RemoteItemError, SessionError):
    """An item that killed every engine that ran it (out of memory, a crash in native code,
    ``os._exit``), named with what its engines died of (:mod:`kubemagic.deaths`).

    A :class:`RemoteItemError` (with ``return_exceptions`` it is that item's result, and the
    map goes on) and a :class:`SessionError` (its engines died; they are replaced).
    """

    def __init__(self, index: int, item_repr: str, cause: str, message: str, fix: str,
                 engine_id: int | None = None) -> None:
        self.index = index
        self.item_repr = item_repr
        self.ename = "EngineDied"
        self.evalue = cause
        self.remote_traceback = ""
        self.engine_id = engine_id
        KubemagicError.__init__(self, message, fix)
