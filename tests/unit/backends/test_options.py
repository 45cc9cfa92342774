"""kubemagic.backends.options.whole_number: the one integer check of options, CLI and magics."""

from __future__ import annotations

import pytest

from kubemagic.backends.options import whole_number
from kubemagic.errors import UsageError


@pytest.mark.parametrize("value,expected", [(3, 3), ("3", 3), (" 12 ", 12), (4.0, 4), ("+5", 5)])
def test_counts_arrive_as_numbers_or_text(value, expected):
    assert whole_number(value, "--x") == expected


@pytest.mark.parametrize("value", ["x", "1.5", 1.5, True, None, "", [1]])
def test_what_is_no_whole_number_is_named_with_its_flag(value):
    with pytest.raises(UsageError, match=r"^--active-deadline-seconds .* is not a whole number"):
        whole_number(value, "--active-deadline-seconds")


def test_the_minimum_and_the_fix_are_the_callers():
    assert whole_number("0", "%kubemap scale", minimum=0) == 0
    with pytest.raises(UsageError) as e:
        whole_number("-3", "%kubemap scale", minimum=0, fix="e.g. %kubemap scale 4")
    assert e.value.message == "%kubemap scale '-3' must be at least 0"
    assert e.value.fix == "e.g. %kubemap scale 4"
    with pytest.raises(UsageError, match="must be at least 1"):
        whole_number(0, "-n/--engines")
