"""The benchmark script runs end to end (``bench/run.py --quick``) and writes every key of
issue 6. Timings are not asserted: this machine is shared and noisy; the numbers are the
benchmark's business, this test only proves the script works.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LOCAL_KEYS = {
    "noop_items_per_s": ["kubemap", "ipp_default", "dask", "processpool_cs1"],
    "cpu_efficiency": ["kubemap", "ipp_default", "dask", "processpool_cs1"],
    "hetero_makespan_over_ideal": ["kubemap", "ipp_default", "dask", "processpool_cs1"],
    "start_s": ["kubemap_local", "ipp_default", "dask"],
    "warm_cell_overhead_s": ["kubemap"],
    "push_mb_s_per_engine": ["kubemap", "ipp_default", "dask", "kubemap_curve"],
}


def test_bench_quick(tmp_path):
    out = tmp_path / "quick.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--json", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(out.read_text())
    for metric, keys in LOCAL_KEYS.items():
        for key in keys:
            value = data[metric][key]
            assert isinstance(value, (int, float)) and value > 0, (metric, key, value)
    meta = data["metadata"]
    assert meta["quick"] is True and meta["repeats"] >= 1
    assert meta["workloads"]["noop_n"] > 0 and meta["machine"]["cpus"]
    # CurveZMQ was really on for the curve push
    curve = meta["curve"]["kubemap_curve"]
    assert curve["curve_serverkey_in_connection_file"] is True
    assert curve["engine_log_says_not_using_curve"] is False
    assert curve["engine_log_says_using_curve"] is True
    # the markdown table is written next to the JSON and printed
    table = out.with_suffix(".md").read_text()
    assert "| metric | kubemap |" in table and "Ratios" in table
    assert "noop map" in proc.stdout


def test_chunk_planner_in_simulation():
    """The planner's tuning, checked where it is deterministic: bench/sim_planner.py drives
    the real MapRun/ChunkPlanner through a model of the dispatcher (PIPELINE chunks per
    engine, measured per-chunk overhead)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import sim_planner
    finally:
        sys.path.remove(str(ROOT / "bench"))
    m = sim_planner.evaluate(seeds=range(40))
    assert m["cpu_efficiency"] >= 0.93  # budget keeps per-chunk overhead small
    assert m["hetero_median"] <= 1.06 and m["hetero_p90"] <= 1.10  # load balance kept
    # the floor: fast items do not end in dozens of tiny round trips
    assert m["noop10000_chunks"] <= 16 and m["noop100000_chunks"] <= 24
