"""Errors from the user's own code look like IPython's, without kubemagic's frames."""

from __future__ import annotations

import re
import time

import pytest

from ._kernel import Kernel

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def kernel():
    k = Kernel()
    k.run("%load_ext kubemagic")
    yield k
    k.shutdown()


def text(error: dict) -> str:
    return ANSI.sub("", "\n".join(error["traceback"]))


def test_a_failing_cell_body_shows_the_users_lines_only(kernel):
    error = kernel.run_error("%%kubemap f range(3) -n 2 --backend local\n"
                             "def f(x):\n    return x\n1 / 0\n")
    shown = text(error)
    assert error["ename"] == "ZeroDivisionError"
    assert "----> 4 1 / 0" in shown and re.search(r"Cell In\[\d+\], line 4", shown), shown
    assert "kubemagic" not in shown, shown


def test_an_interrupted_map_is_one_line_and_the_engines_stay(kernel):
    msg_id = kernel.submit("%%kubemap nap range(200) --no-progress\n"
                           "import time\ndef nap(x):\n    time.sleep(0.2)\n    return x\n")
    time.sleep(2)
    kernel.km.interrupt_kernel()
    _, errors = kernel.collect(msg_id)
    assert len(errors) == 1 and errors[0]["ename"] == "KeyboardInterrupt", errors
    shown = text(errors[0])
    assert "the map was interrupted after" in shown and "engines and pushed data are kept" in shown
    assert "kubemagic" not in shown.replace("kubemagic:", ""), shown
    assert kernel.run("%kubemap nap [1, 2] --no-progress --out again\nprint(again)"
                      ).strip() == "[1, 2]"
