"""What mapped functions print reaches the cell, tagged by item; the rest is kept."""

from __future__ import annotations

import re

import pytest

from ._kernel import Kernel


@pytest.fixture(scope="module")
def kernel():
    k = Kernel()
    k.run("%load_ext kubemagic\nimport kubemagic")
    yield k
    k.shutdown()


def test_prints_and_stderr_are_tagged_by_item_in_order(kernel):
    out = kernel.run(
        "%%kubemap chatty range(6) -n 2 --backend local --chunksize 2 --out r\n"
        "import sys\n"
        "def chatty(x):\n"
        "    print('start', x)\n"
        "    print('warn', x, file=sys.stderr)\n"
        "    print('end', x)\n"
        "    return x\n")
    assert kernel.run("print(r)").strip() == "[0, 1, 2, 3, 4, 5]"
    for x in range(6):
        mine = [line for line in out.splitlines() if re.match(rf"\[item {x} · engine \d+", line)]
        # each stream keeps the item's order (stdout and stderr travel apart, as anywhere)
        out_lines = [line.split("] ", 1)[1] for line in mine if "stderr]" not in line]
        err_lines = [line.split("] ", 1)[1] for line in mine if "stderr]" in line]
        assert out_lines == [f"start {x}", f"end {x}"] and err_lines == [f"warn {x}"], out


def test_a_flood_is_capped_and_everything_is_kept(kernel):
    out = kernel.run(
        "%%kubemap noisy range(50) --chunksize 10 --out r2\n"
        "def noisy(x):\n"
        "    for i in range(10):\n"
        "        print(x, i)\n"
        "    return x\n")
    shown = [line for line in out.splitlines() if line.startswith("[item ")]
    assert len(shown) == 200
    assert "300 more lines of output not shown here" in out
    kept = kernel.run("h = kubemagic.current().current_map\n"
                      "print(len(h.output.log.lines), [l.text for l in h.output.log.for_item(7)])")
    assert kept.strip() == "500 " + str([f"7 {i}" for i in range(10)])
