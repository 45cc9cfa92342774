"""Pure helpers: argument checks, import reconstruction, progress text, local options."""

from __future__ import annotations

import json
import os.path

import pytest

from kubemagic.backends.local import local_backend
from kubemagic.errors import UsageError
from kubemagic.mapping import Progress
from kubemagic.progress import format_duration, format_progress, text_bar
from kubemagic.session import _check_chunksize, _check_count, _materialize, import_statements


def test_import_statements_keep_aliases_and_from_imports():
    before = {"x": 1}
    after = {"x": 1, "jj": json, "pth": os.path, "dumps": json.dumps, "y": 2}
    code = import_statements(before, after, ["json", "os"]).splitlines()
    assert "import json as jj" in code
    assert "import posixpath as pth" in code
    assert "from json import dumps" in code
    assert not any("y" in line.split() for line in code)


def test_import_statements_prefer_the_defining_module():
    import fractions
    import statistics

    code = import_statements({}, {"Fraction": fractions.Fraction}, ["fractions", "statistics"])
    assert code == "from fractions import Fraction"
    assert statistics.Fraction is fractions.Fraction  # the trap this avoids


@pytest.mark.parametrize("value", [0, -3, 1.5, "4", True, None])
def test_check_count_rejects(value):
    with pytest.raises(UsageError):
        _check_count(value, "n")


def test_check_chunksize():
    assert _check_chunksize("auto") == "auto"
    assert _check_chunksize("12") == 12
    for bad in ("zero", 0, -1, "1.5"):
        with pytest.raises(UsageError, match="chunksize"):
            _check_chunksize(bad)


def test_materialize_zips_and_rejects_non_iterables():
    assert _materialize(([1, 2, 3], "ab")) == [(1, "a"), (2, "b")]
    with pytest.raises(UsageError, match="not iterable"):
        _materialize(([1], 5))


def test_local_backend_refuses_kubernetes_options():
    with pytest.raises(UsageError, match="--image, --memory only apply"):
        local_backend(image="x", memory="1Gi")
    with pytest.raises(UsageError, match="unknown option"):
        local_backend(colour="red")
    spec = local_backend(env={"A": 1})
    assert spec.name == "local" and spec.config["ScalableLocalEngineSetLauncher"]["environment"] == {"A": "1"}


def test_progress_text():
    p = Progress(done=50, total=100, failures=1, elapsed=10.0, retried_chunks=2, state="running")
    assert format_progress(p) == "50/100 items · 5.0 items/s · ETA 10 s · 1 failed · 2 chunk(s) retried"
    assert text_bar(p, width=10).startswith("[#####.....]")
    assert format_duration(3725) == "1 h 02 min" and format_duration(None) == "?"
