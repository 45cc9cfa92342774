"""Large pushes to local engines through one shared-memory file (kubemagic.sharedpush)."""

from __future__ import annotations

import glob

import numpy as np

import kubemagic


def mapped_push_files(_: int) -> list[str]:
    """On an engine: the shared push files it has mapped (their names end in "(deleted)")."""
    with open("/proc/self/maps") as f:
        return sorted({line.split(None, 5)[5].strip() for line in f
                       if "/dev/shm/kubemagic-push-" in line})


def test_engines_share_one_copy_and_late_engines_get_the_value_too():
    s = kubemagic.KubeCluster(n=3, backend="local", idle_timeout=0).start()
    try:
        weights = np.random.default_rng(0).random(2_000_000)  # 16 MB
        s.push(weights=weights)
        assert glob.glob("/dev/shm/kubemagic-push-*") == [], "the file outlived the push"
        total = float(weights.sum())
        assert s.map(lambda _: float(weights.sum()), range(3), progress=False) == [total] * 3
        # on every engine (the client's direct view reaches each one), the same one file
        maps = s.client[s.ready_ids()].apply_sync(mapped_push_files, 0)
        assert len(maps) == 3, maps
        assert all(len(m) == 1 and m[0].endswith("(deleted)") for m in maps), maps
        assert len({m[0] for m in maps}) == 1, f"the engines mapped different files: {maps}"
        # an engine that joins later gets the value from the replay log
        s.scale(4)
        assert s.map(lambda _: float(weights.sum()), range(8), progress=False) == [total] * 8
    finally:
        s.stop()
