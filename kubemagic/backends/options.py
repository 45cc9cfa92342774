"""Backend options, declared once: a dataclass per backend whose fields say how each option
is checked, shown and consumed (:func:`option`), and everything derived from them.

The magic's and the CLI's flags (:func:`option_flags`), the running-fleet check
(:func:`fleet_conflicts`), the "that option is another backend's" error
(:func:`parse_options_of`) and the values a backend hands its launcher (:func:`layer_values`)
all come from those fields, so a backend's new option is one field, not an edit of the magic,
the CLI and the checks. The helpers every backend's parsers share (key=value lists, whole
numbers) live here too, so a bad value reads the same whichever backend or command took it.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Literal, TypeVar

from ..errors import UsageError, as_flags
from . import registered

#: who consumes an option: the session's spec of the controller (``session``), the engine
#: launcher itself (``launcher``), or the engines' description the launcher builds from it
#: (``manifest``, e.g. a pod spec); a backend turns the last two into launcher settings
Layer = Literal["session", "launcher", "manifest"]
_METADATA_KEY = "kubemagic.option"
T = TypeVar("T")


@dataclass(frozen=True)
class Option:
    """How one backend option is checked, shown and consumed: its dataclass field's metadata."""

    #: the flag's text or the Python value -> the checked value; raises one UsageError
    #: naming the flag (``--name``) and a valid example
    parse: Callable[[Any], Any]
    #: one line for ``%kubemap?`` and ``kubemagic demo --help``
    help: str
    #: how the flag's value is written, e.g. ``KEY=VALUE[,...]`` (none for on/off options)
    metavar: str | None
    layer: Layer
    #: it describes the engines: a cell giving another value than the running session's
    #: must stop that session first (the magic's check, :func:`fleet_conflicts`)
    fleet: bool = True
    #: ``None`` is a value of its own (e.g. "keep the image's user"), not "the default"
    nullable: bool = False
    #: the name the consuming layer knows it by, when not the option's own
    #: (``env`` is ipyparallel's ``environment`` launcher trait)
    target: str = ""


def option(
    *,
    parse: Callable[[Any], Any],
    help: str,
    layer: Layer,
    metavar: str | None = None,
    default: Any = None,
    fleet: bool = True,
    nullable: bool = False,
    target: str = "",
) -> Any:
    """A dataclass field declaring one backend option (see :class:`Option`).

    A boolean ``default`` makes an on/off option (``--name`` / ``--no-name``); a dict or
    list default is copied for each instance.
    """
    metadata = {_METADATA_KEY: Option(parse, help, metavar, layer, fleet, nullable, target)}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def declared(options_class: type) -> dict[str, Option]:
    """Option name -> :class:`Option`, for every field of a backend's options dataclass."""
    return {f.name: f.metadata[_METADATA_KEY] for f in fields(options_class)}


def layer_values(options: Any, *layers: Layer) -> dict[str, Any]:
    """The checked values of the options consumed by ``layers``, under their target names."""
    return {
        opt.target or name: getattr(options, name)
        for name, opt in declared(type(options)).items()
        if opt.layer in layers
    }


def parse_options_of(options_class: type[T], backend: str, options: Mapping[str, Any]) -> T:
    """Check ``options`` (keyword arguments or flag strings) into ``options_class``.

    ``None`` means "not given" (except for :attr:`Option.nullable` options). An option of
    another backend is refused, naming that backend, unless it is empty (``0``, ``""``,
    ``{}``), so one call can serve several backends; a name no backend knows is refused
    with the valid names.
    """
    own = declared(options_class)
    _refuse_strangers(backend, own, {k: v for k, v in options.items() if k not in own})
    values = {}
    for name, opt in own.items():
        value = options.get(name)
        if value is not None:
            values[name] = opt.parse(value)
        elif name in options and opt.nullable:
            values[name] = None
    return options_class(**values)


def _refuse_strangers(backend: str, own: Mapping[str, Option], strangers: Mapping[str, Any]) -> None:
    if not strangers:
        return
    owners = {
        name: other
        for other, entry in registered().items()
        if other != backend
        for name in declared(entry.options)
    }
    foreign = sorted(name for name, value in strangers.items() if name in owners and value)
    if foreign:
        others = [registered()[o] for o in sorted({owners[name] for name in foreign})]
        raise UsageError(
            f"{as_flags(foreign)} only apply to engines on "
            f"{' or '.join(o.where for o in others)}, but the backend is {backend}",
            fix=" or ".join(o.advice for o in others) + ", or drop those options",
        )
    unknown = sorted(name for name in strangers if name not in owners)
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(own), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise UsageError(
            f"unknown option(s) {', '.join(unknown)} for the {backend} backend",
            fix=f"{hint}valid options are: {', '.join(own)}",
        )


def parse_key_values(
    flag: str,
    value: Mapping[str, Any] | str | list[str],
    *,
    env_names: bool = False,
    reserved: frozenset[str] = frozenset(),
) -> dict[str, str]:
    """``{"a": "1"}``, ``"a=1,b=2"`` or ``["a=1", "b=2"]`` → ``{"a": "1", "b": "2"}``.

    With ``env_names`` the keys must be environment variable names, none of ``reserved``
    (the variables a backend sets itself: a user's value would break the engines).
    """
    name = as_flags([flag])
    if isinstance(value, Mapping):
        pairs = [(str(k), v) for k, v in value.items()]
    else:
        items = value.split(",") if isinstance(value, str) else list(value)
        pairs = []
        for item in (i.strip() for i in items):
            if not item:
                continue
            key, sep, val = item.partition("=")
            if not sep or not key:
                raise UsageError(f"{name} {item!r} is not KEY=VALUE",
                                 fix=f"write {name} KEY=VALUE[,KEY2=VALUE2]")
            pairs.append((key.strip(), val))
    result: dict[str, str] = {}
    for key, val in pairs:
        if env_names and not re.match(r"^[A-Za-z_][A-Za-z0-9_.-]*$", key):
            raise UsageError(
                f"{name} name {key!r} is not a valid environment variable name",
                fix=f"use letters, digits and underscores, e.g. {name} OMP_NUM_THREADS=1",
            )
        if key in reserved:
            raise UsageError(
                f"{name} {key} is set by kubemagic for every engine and cannot be overridden",
                fix=f"drop {key} from {name} (reserved: {', '.join(sorted(reserved))})",
            )
        result[key] = str(val)
    return result


def whole_number(value: Any, name: str, *, minimum: int = 1, fix: str = "") -> int:
    """``value`` — an int, or the text of a flag or a magic's argument — as an int of at least
    ``minimum``; else one :class:`UsageError` naming ``name`` (``--active-deadline-seconds``,
    ``%kubemap scale``).

    The one integer check of options, the CLI and the line magics: a bool or a fraction is
    no count, whichever way it arrived.
    """
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
        number = int(value)
    fix = fix or f"give a whole number of at least {minimum}"
    if number is None:
        raise UsageError(f"{name} {value!r} is not a whole number", fix=fix)
    if number < minimum:
        raise UsageError(f"{name} {value!r} must be at least {minimum}", fix=fix)
    return number


#: title and description of the argument group :func:`option_flags` fills (magic and CLI)
FLAG_GROUP = ("engine options",
              "[backend] names the backends that use the option; another backend refuses it")


@dataclass(frozen=True)
class Flag:
    """The command-line flag of one option, as ``argparse.add_argument(*args, **kwargs)``."""

    name: str
    args: tuple[str, ...]
    kwargs: dict[str, Any]


def option_flags() -> list[Flag]:
    """One flag per option of every registered backend, for the magic and the CLI.

    Every flag defaults to ``None`` ("not given"), so only what the user typed reaches the
    backend, as text (the option's parser reads it) unless the default is a number. An
    option several backends declare (``env``) is one flag; its help names them.
    """
    owners: dict[str, list[str]] = {}
    first: dict[str, tuple[Option, Any]] = {}
    for backend, entry in registered().items():
        for f in fields(entry.options):
            owners.setdefault(f.name, []).append(backend)
            first.setdefault(f.name, (f.metadata[_METADATA_KEY], f.default))
    flags = []
    for name, (opt, default) in first.items():
        kwargs: dict[str, Any] = {"dest": name, "default": None,
                                  "help": f"[{', '.join(owners[name])}] {opt.help}"}
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:  # a number with a number default is one on the command line too: --gpu -1
            kwargs["metavar"] = opt.metavar
            if isinstance(default, (int, float)) and not opt.nullable:
                kwargs["type"] = type(default)
        flags.append(Flag(name, (as_flags([name]),), kwargs))
    return flags


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The engine options a parsed command line gives (its :func:`option_flags` not left out)."""
    return {f.name: getattr(args, f.name) for f in option_flags()
            if getattr(args, f.name, None) is not None}


def fleet_conflicts(backend: str, running: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    """The options in ``given`` that describe other engines than a running ``backend``
    session started with ``running``: compared as checked values, so ``"gpu=true"`` and
    ``{"gpu": "true"}`` are the same node selector. An option of another backend always
    conflicts (these engines cannot have it)."""
    options_class = registered()[backend].options
    own = declared(options_class)

    def checked(options: Mapping[str, Any], name: str) -> Any:
        subset = {name: options[name]} if name in options else {}
        return getattr(parse_options_of(options_class, backend, subset), name)

    return [
        name for name in given
        if name not in own or (own[name].fleet and checked(given, name) != checked(running, name))
    ]
