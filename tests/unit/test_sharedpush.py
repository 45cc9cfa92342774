"""The shared-memory push file: layout, copy-on-write loading, small values, orphans."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from kubemagic import sharedpush
from kubemagic.sharedpush import SharedPush


@pytest.fixture
def engine_ns(monkeypatch):
    """Stands in for an engine's ``__main__`` namespace."""
    ns: dict = {}
    monkeypatch.setattr(sharedpush, "main_namespace", lambda: ns)
    return ns


def test_arrays_come_back_equal_aligned_and_private_to_each_loader(engine_ns):
    a = np.arange(1_000_000, dtype=np.float64)
    shared = SharedPush.write({"a": a, "b": np.ones((300, 300), dtype=np.int8), "c": "text"})
    assert shared is not None
    try:
        assert oct(os.stat(shared.path).st_mode & 0o777) == "0o600"
        sharedpush.load(*shared.args)
        first = dict(engine_ns)
        sharedpush.load(*shared.args)  # a second engine
    finally:
        shared.close()
    assert not shared.path.exists()
    assert np.array_equal(first["a"], a) and first["b"].shape == (300, 300) and first["c"] == "text"
    assert first["a"].ctypes.data % sharedpush.mmap.PAGESIZE == 0
    first["a"][0] = -1.0  # writable, and the write stays with the writer
    assert engine_ns["a"][0] == 0.0 and first["a"][0] == -1.0


def test_small_values_take_the_socket():
    assert SharedPush.write({"x": list(range(100))}) is None


def test_unpicklable_values_raise_and_leave_no_file():
    import threading

    before = set(sharedpush.SHM_DIR.glob("kubemagic-push-*"))
    with pytest.raises(TypeError):
        SharedPush.write({"big": np.zeros(10**6), "lock": threading.Lock()})
    assert set(sharedpush.SHM_DIR.glob("kubemagic-push-*")) == before


def test_files_of_dead_writers_are_removed_and_live_ones_kept():
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    orphan = sharedpush.SHM_DIR / f"kubemagic-push-{dead}-test"
    live = sharedpush.SHM_DIR / f"kubemagic-push-{os.getpid()}-test"
    for p in (orphan, live):
        p.write_bytes(b"x")
    try:
        shared = SharedPush.write({"a": np.zeros(10**6)})
        assert shared is not None
        shared.close()
        assert not orphan.exists() and live.exists()
    finally:
        for p in (orphan, live):
            p.unlink(missing_ok=True)
