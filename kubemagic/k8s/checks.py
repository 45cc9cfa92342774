"""``kubemagic doctor``'s result: one row per check, and the table they print as.

Shared by the access checks (:mod:`.doctor`) and the test-pod checks (:mod:`.doctor_pod`)
so both speak the same row shape: a status, what was found, and how to fix a failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TextIO

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


@dataclass
class Check:
    """One row: ``status`` is PASS, FAIL or SKIP (a prerequisite failed: not a verdict)."""

    name: str
    status: str
    detail: str
    #: how to fix a failure (every FAIL has one)
    fix: str = ""


def print_table(checks: list[Check], out: TextIO) -> None:
    """The aligned table, then each failure again with its fix (or that all passed)."""
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{c.status}  {c.name.ljust(width)}  {c.detail}", file=out)
    failures = [c for c in checks if c.status == FAIL]
    if failures:
        print(f"\n{len(failures)} check(s) failed:", file=out)
        for c in failures:
            print(f"- {c.name}: {c.detail}\n  how to fix: {c.fix}", file=out)
    else:
        print(f"\nall {len(checks)} checks passed: the Kubernetes backend can run here", file=out)
