"""Kubernetes resource quantities (``--cpu 500m``, ``--memory 2Gi``), checked before any API call.

Why here and not left to the API server: the server answers a bad quantity with a 422
that names a JSON path in a Job the user never wrote. Checking first lets the error say
which flag was wrong and what a valid value looks like — while the user is still looking
at the cell they typed.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from ..errors import UsageError

# The grammar of k8s.io/apimachinery resource.Quantity: a signed decimal number followed by
# a binary-SI suffix, a decimal-SI suffix or a decimal exponent.
_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:\d+\.?\d*|\.\d+))"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$"
)

_CPU = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)m?$")

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}


def _parse(value: str) -> Decimal | None:
    """The quantity's value in base units, or None when it is not a quantity at all."""
    match = _QUANTITY.match(value.strip())
    if match is None:
        return None
    try:
        number = Decimal(match["number"])
    except InvalidOperation:  # pragma: no cover - the regex admits only valid decimals
        return None
    suffix = match["suffix"] or ""
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * _DECIMAL[suffix]
    return number * Decimal(10) ** int(suffix[1:])


def cpu_quantity(value: str | int | float) -> str:
    """Validate ``--cpu`` and return it as a Kubernetes quantity string.

    Accepts cores (``2``, ``0.5``) and millicores (``500m``). Raises :class:`UsageError`
    for anything else, zero or a negative number.
    """
    text = str(value).strip()
    # Kubernetes would also take "1k" or "2Gi" CPUs; nobody means that, so only cores
    # and millicores are accepted.
    parsed = _parse(text) if _CPU.match(text) else None
    if parsed is None:
        raise UsageError(
            f"--cpu {value!r} is not a CPU quantity",
            fix="give cores such as --cpu 2 or --cpu 0.5, or millicores such as --cpu 500m",
        )
    if parsed <= 0:
        raise UsageError(
            f"--cpu {value!r} must be more than zero", fix="for example --cpu 1 or --cpu 250m"
        )
    if parsed < Decimal("0.001"):
        raise UsageError(
            f"--cpu {value!r} is below Kubernetes' smallest unit (1m)",
            fix="use at least --cpu 1m",
        )
    return text


def memory_quantity(value: str | int) -> str:
    """Validate ``--memory`` and return it as a Kubernetes quantity string.

    Accepts bytes with a binary (``512Mi``, ``2Gi``) or decimal (``500M``, ``2G``) suffix, or
    a plain number of bytes. ``1XB``, ``2GB`` (not a Kubernetes unit) and values under one
    mebibyte (almost always a forgotten unit: ``--memory 2`` is two bytes) are rejected.
    """
    text = str(value).strip()
    parsed = _parse(text)
    if parsed is None or text[-1:] in ("m", "u", "n"):
        hint = ""
        if re.match(r"^\d+(\.\d+)?[KMGTPE]B$", text, re.IGNORECASE):
            hint = f" (Kubernetes writes {text[:-1].rstrip('bB')}i or {text[:-1]}, not {text})"
        raise UsageError(
            f"--memory {value!r} is not a memory quantity{hint}",
            fix="give bytes with a unit such as --memory 512Mi or --memory 2Gi "
            "(binary Ki Mi Gi Ti, decimal k M G T)",
        )
    if parsed < 2**20:
        raise UsageError(
            f"--memory {value!r} is less than 1 MiB — an engine cannot run in that",
            fix="add a unit, e.g. --memory 512Mi or --memory 2Gi",
        )
    return text


def gpu_count(value: str | int | None) -> int:
    """Validate ``--gpu`` (whole devices of ``nvidia.com/gpu``); 0 or None means no GPU."""
    if value is None or value == "":
        return 0
    try:
        count = int(str(value).strip())
    except ValueError:
        raise UsageError(
            f"--gpu {value!r} is not a whole number of GPUs",
            fix="GPUs are whole devices: use --gpu 1 (or --gpu 2, ...)",
        ) from None
    if count < 0:
        raise UsageError(f"--gpu {value!r} is negative", fix="use --gpu 1, or leave it out")
    return count
