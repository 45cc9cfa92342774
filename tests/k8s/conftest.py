"""Fixtures of the real-cluster backend tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .helpers import LoopThread


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    """A fresh asyncio loop thread per test, where the launcher's async API runs."""
    thread = LoopThread()
    yield thread
    thread.close()
