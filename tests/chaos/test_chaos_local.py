"""Short chaos run on local engines in CI: several kills, no item lost or duplicated."""

from __future__ import annotations

from .chaos import run


def test_random_engine_kills_lose_and_duplicate_nothing():
    totals = run(maps=3, kills=4, n_items=200, backend="local", seed=7, options={})
    assert totals["kills"] >= 3, totals
    assert totals["failed_maps"] == 0, totals["errors"]
    assert totals["lost"] == 0 and totals["duplicated"] == 0, totals
    assert totals["unexecuted"] == 0 and totals["executions"] >= totals["items"], totals
    assert totals["retried_chunks"] >= 1, totals
