"""kubemagic.arguments: one clear error per bad argument, the same from API and magic."""

from __future__ import annotations

import pytest

from kubemagic.arguments import (check_chunksize, check_code, check_count, check_names,
                                 check_seconds, materialize)
from kubemagic.errors import UsageError


@pytest.mark.parametrize("value", [0, -3, 1.5, "4", True, None])
def test_check_count_rejects(value):
    with pytest.raises(UsageError):
        check_count(value, "n")


def test_check_count_accepts_the_minimum():
    assert check_count(0, "retries", minimum=0) == 0


def test_check_chunksize():
    assert check_chunksize("auto") == "auto"
    assert check_chunksize("12") == 12
    for bad in ("zero", 0, -1, "1.5"):
        with pytest.raises(UsageError, match="chunksize"):
            check_chunksize(bad)


def test_check_seconds():
    assert check_seconds(None, "--x", zero_ok=True, fix="") is None
    assert check_seconds(0, "--idle-timeout", zero_ok=True, fix="") == 0.0
    with pytest.raises(UsageError, match="--start-timeout 0 must be a positive"):
        check_seconds(0, "--start-timeout", zero_ok=False, fix="")
    for bad in (-1, True, "10"):
        with pytest.raises(UsageError, match="--idle-timeout"):
            check_seconds(bad, "--idle-timeout", zero_ok=True, fix="")


def test_check_names_and_code():
    assert check_names({"w": 1}) == {"w": 1}
    with pytest.raises(UsageError, match="not a valid Python name"):
        check_names({"1bad": 1})
    with pytest.raises(UsageError, match="line 2"):
        check_code("x = 1\nx = (")


def test_materialize_zips_and_rejects_non_iterables():
    assert materialize(([1, 2, 3], "ab")) == [(1, "a"), (2, "b")]
    with pytest.raises(UsageError, match="argument 2 to map is a int"):
        materialize(([1], 5))


def test_materialize_names_the_position_where_the_iterable_failed():
    def items():
        yield from range(3)
        raise ValueError("row 3 is corrupt")

    with pytest.raises(UsageError, match="ValueError: row 3 is corrupt while producing item 3"):
        materialize((items(),))


def test_parse_adapt():
    from kubemagic.arguments import parse_adapt

    assert parse_adapt("0:8") == (0, 8)
    for bad in ("8", "a:b", "4:2", "-1:3", ""):
        with pytest.raises(UsageError, match="--adapt|adaptive"):
            parse_adapt(bad)


def test_one_iterable_is_kept_untupled_and_tupled_per_chunk():
    import numpy as np

    big = range(10**12)  # far beyond memory as tuples: kept as the range it is
    items = materialize((big,))
    assert len(items) == 10**12 and items[5] == (5,) and items[3:6] == [(3,), (4,), (5,)]
    xs = [1, 2]
    copied = materialize((xs,))
    xs.append(3)  # a list is copied: later changes do not reach the running map
    assert list(copied) == [(1,), (2,)]
    rows = materialize((np.arange(6).reshape(3, 2),))
    assert len(rows) == 3 and rows[1][0].tolist() == [2, 3]
    assert list(materialize(((x * 2 for x in range(3)),))) == [(0,), (2,), (4,)]
