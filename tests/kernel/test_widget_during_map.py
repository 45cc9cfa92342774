"""The widget stays usable while a blocking %%kubemap cell runs (real kernel, real comms)."""

from __future__ import annotations

import pytest

from ._kernel import Kernel

SLOW_MAP = """%%kubemap slot_of range(80) -n 2 --backend local --out slots
import os, time
def slot_of(i):
    time.sleep(0.15)
    return int(os.environ["KUBEMAGIC_ENGINE_INDEX"])
"""


@pytest.fixture
def kernel():
    k = Kernel()
    k.run("%load_ext kubemagic")
    yield k
    k.shutdown()


def test_scale_click_during_map_adds_an_engine_that_gets_work(kernel):
    msg_id = kernel.submit(SLOW_MAP)
    count = kernel.find_model("BoundedIntTextModel", description="engines")
    scale = kernel.find_model("ButtonModel", description="Scale")
    kernel.poll_iopub(1.0)  # let the map get under way
    kernel.set_value(count, value=3)
    kernel.click(scale)
    _, errors = kernel.collect(msg_id)
    assert not errors, errors
    out = kernel.run(
        "import kubemagic; s = kubemagic.current()\n"
        "print(s.n, len(s.ready_ids()), len(slots), sorted(set(slots)))"
    )
    n, ready, total, seen = out.strip().split(" ", 3)
    assert (n, ready, total) == ("3", "3", "80"), out
    # the engine started by the click joined mid-map, got the replay and ran items
    assert seen == "[0, 1, 2]", out


def test_stop_click_cancels_pending_work_and_keeps_engines(kernel):
    msg_id = kernel.submit(SLOW_MAP.replace("range(80)", "range(400)"))
    stop = kernel.find_model("ButtonModel", description="Stop map")
    kernel.poll_iopub(1.0)
    kernel.click(stop)
    _, errors = kernel.collect(msg_id, timeout=60)
    assert len(errors) == 1 and "cancelled" in errors[0]["evalue"], errors
    # engines kept: the next map runs normally on the same session
    out = kernel.run("import kubemagic\ns = kubemagic.current()\n"
                     "print(s.state, s.map(abs, [-1, -2], progress=False))")
    assert out.strip() == "running [1, 2]", out


def test_shut_down_click_ends_the_map_at_once_saying_the_engines_are_gone(kernel):
    msg_id = kernel.submit(SLOW_MAP.replace("time.sleep(0.15)", "time.sleep(30)"))
    shut = kernel.find_model("ButtonModel", description="Shut down")
    kernel.poll_iopub(1.0)  # both engines are inside a 30 s item now
    kernel.click(shut)
    _, errors = kernel.collect(msg_id, timeout=25)  # not after the running items' 30 s
    assert len(errors) == 1, errors
    assert "the engines were shut down" in errors[0]["evalue"], errors
    assert "still there" not in errors[0]["evalue"], errors
    out = kernel.run("import kubemagic\nprint(kubemagic.current().state)")
    assert out.strip() == "stopped", out
