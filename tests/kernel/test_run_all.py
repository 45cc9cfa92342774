""""Run All": every request queued at once, as JupyterLab sends them (real kernel, real ZMQ).

nbclient and ``execute_interactive`` send one cell at a time and wait for its reply; a
notebook frontend does not. While a ``%%kubemap`` cell blocks, the kernel's widget pump
reads the shell socket: these tests check that nothing it reads is lost, duplicated,
re-signed or reordered, whatever the cell does.
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ._kernel import Kernel

SLOW = """%%kubemap slow range(24) -n 2 --backend local --out {out}
import time
def slow(x):
    time.sleep(0.1)
    return x * x
"""


@dataclass
class Reply:
    """What one request got back: its shell reply and the iopub output it caused."""

    msg_type: str = ""
    status: str = ""
    count: int | None = None
    stdout: str = ""
    errors: list[str] = field(default_factory=list)
    replies: int = 0
    inputs: int = 0


@pytest.fixture
def kernel(tmp_path):
    k = Kernel(log_path=str(tmp_path / "kernel.log"))
    k.run("%load_ext kubemagic")
    k.log_path = tmp_path / "kernel.log"
    yield k
    k.shutdown()


def send_all(kernel: Kernel, cells: list[str], stop_on_error: bool = True) -> list[str]:
    """All execute requests at once, without waiting (JupyterLab's Run All)."""
    return [kernel.kc.execute(c, stop_on_error=stop_on_error) for c in cells]


def collect(kernel: Kernel, ids: list[str], timeout: float = 90,
            settle: float = 0.7) -> tuple[dict[str, Reply], list[str]]:
    """Read shell and iopub until every request has its reply and its idle status, then
    ``settle`` seconds more (a duplicate would show up there). Returns the replies by
    request id and the order in which the shell replies arrived."""
    got = {i: Reply() for i in ids}
    idle: set[str] = set()
    order: list[str] = []
    deadline = time.monotonic() + timeout
    settle_until = None
    while True:
        now = time.monotonic()
        if settle_until is None and len(order) >= len(ids) and idle >= set(ids):
            settle_until = now + settle
        if settle_until is not None and now > settle_until:
            return got, order
        if now > deadline:
            missing = [i for i in ids if got[i].replies == 0]
            pytest.fail(f"no reply within {timeout} s for requests "
                        f"{[ids.index(i) for i in missing]} of {len(ids)}\n"
                        + Path(kernel.log_path).read_text()[-3000:], pytrace=False)
        drained = False
        try:
            msg = kernel.kc.get_shell_msg(timeout=0.02)
            pid = msg["parent_header"].get("msg_id")
            if pid in got:
                r = got[pid]
                r.replies += 1
                r.msg_type = msg["msg_type"]
                r.status = msg["content"].get("status", "")
                r.count = msg["content"].get("execution_count")
                order.append(pid)
        except queue.Empty:
            drained = True
        try:
            while True:
                msg = kernel.kc.get_iopub_msg(timeout=0.02 if drained else 0)
                kernel._track_comm(msg)
                pid = msg["parent_header"].get("msg_id")
                if pid not in got:
                    continue
                t, c = msg["msg_type"], msg["content"]
                if t == "stream" and c["name"] == "stdout":
                    got[pid].stdout += c["text"]
                elif t == "error":
                    got[pid].errors.append(f"{c['ename']}: {c['evalue']}")
                elif t == "execute_input":
                    got[pid].inputs += 1
                elif t == "status" and c["execution_state"] == "idle":
                    idle.add(pid)
        except queue.Empty:
            pass


def assert_clean(kernel: Kernel, got: dict[str, Reply], order: list[str], ids: list[str]) -> None:
    """Each request answered exactly once, in the order sent; the kernel logged no error."""
    assert order == ids, f"replies arrived in order {[ids.index(i) for i in order]}"
    assert all(r.replies == 1 for r in got.values()), [r.replies for r in got.values()]
    log = Path(kernel.log_path).read_text()
    assert "Invalid Message" not in log and "Duplicate Signature" not in log, log[-3000:]
    assert "ERROR" not in log, log[-3000:]


def test_run_all_with_kubemap_cells_first_and_in_the_middle(kernel):
    cells = [
        SLOW.format(out="qa"),
        "qb = sum(qa)\nprint('second', qb)",
        "print('third', len(qa))",
        SLOW.format(out="qc").replace("range(24)", "range(12)"),
        "print('fifth', qc[-1])",
        "print('sixth')",
    ]
    ids = send_all(kernel, cells)
    got, order = collect(kernel, ids)
    assert_clean(kernel, got, order, ids)
    replies = [got[i] for i in ids]
    assert [r.status for r in replies] == ["ok"] * 6, [(r.status, r.errors) for r in replies]
    counts = [r.count for r in replies]
    assert counts == list(range(counts[0], counts[0] + 6)), counts
    assert all(r.inputs == 1 for r in replies)
    # outputs land in their own cell
    assert replies[1].stdout == f"second {sum(x * x for x in range(24))}\n"
    assert replies[2].stdout == "third 24\n"
    assert replies[4].stdout == "fifth 121\n"
    assert replies[5].stdout == "sixth\n"


def test_plain_cell_first_then_kubemap_then_many_queued(kernel):
    cells = ["print('first')", SLOW.format(out="qa")]
    cells += [f"print({i} + len(qa))" for i in range(40)]
    ids = send_all(kernel, cells)
    got, order = collect(kernel, ids)
    assert_clean(kernel, got, order, ids)
    outs = [got[i].stdout for i in ids]
    assert outs[0] == "first\n"
    assert outs[2:] == [f"{i + 24}\n" for i in range(40)]


def test_failing_kubemap_cell_stops_run_all_like_any_failing_cell(kernel):
    failing = SLOW.format(out="qa").replace("return x * x", "return 1 / (x - 10)")
    ids = send_all(kernel, [failing, "print('never')", "print('never either')"])
    got, order = collect(kernel, ids)
    assert_clean(kernel, got, order, ids)
    statuses = [got[i].status for i in ids]
    # stop_on_error (JupyterLab's default): the queued cells are answered "aborted"
    assert statuses == ["error", "aborted", "aborted"], statuses
    assert "item 10" in got[ids[0]].errors[0], got[ids[0]].errors
    assert not got[ids[1]].stdout and not got[ids[2]].stdout
    # without stop_on_error the queued cells run, in order, and the session is usable
    ids = send_all(kernel, [failing, "print('runs')", SLOW.format(out="qd"), "print(len(qd))"],
                   stop_on_error=False)
    got, order = collect(kernel, ids)
    assert_clean(kernel, got, order, ids)
    assert [got[i].status for i in ids] == ["error", "ok", "ok", "ok"]
    assert [got[i].stdout for i in ids[1:]] == ["runs\n", "", "24\n"]


def test_interrupted_kubemap_cell_then_queued_cells(kernel):
    cells = [SLOW.format(out="qa").replace("range(24)", "range(400)"),
             "print('after interrupt')", SLOW.format(out="qe"), "print(sum(qe))"]
    ids = send_all(kernel, cells, stop_on_error=False)
    kernel.poll_iopub(2.5)  # the map is under way, the other requests queued behind it
    kernel.km.interrupt_kernel()
    got, order = collect(kernel, ids)
    assert_clean(kernel, got, order, ids)
    assert got[ids[0]].status == "error" and "KeyboardInterrupt" in got[ids[0]].errors[0]
    assert [got[i].status for i in ids[1:]] == ["ok", "ok", "ok"]
    assert got[ids[1]].stdout == "after interrupt\n"
    assert got[ids[3]].stdout == f"{sum(x * x for x in range(24))}\n"


def test_other_requests_during_a_map_are_answered_in_order(kernel):
    kc = kernel.kc
    ids = [kc.execute(SLOW.format(out="qa"))]
    kernel.poll_iopub(1.0)  # sent while the cell blocks, interleaved with cells
    ids.append(kc.complete("import o", 8))
    ids.append(kc.execute("print('two')"))
    ids.append(kc.inspect("len", 3))
    ids.append(kc.kernel_info())
    ids.append(kc.execute("print('three', len(qa))"))
    got, order = collect(kernel, ids)
    assert_clean(kernel, got, order, ids)
    types = [got[i].msg_type for i in ids]
    assert types == ["execute_reply", "complete_reply", "execute_reply", "inspect_reply",
                     "kernel_info_reply", "execute_reply"], types
    assert [got[i].status for i in ids] == ["ok"] * 6
    assert got[ids[2]].stdout == "two\n" and got[ids[5]].stdout == "three 24\n"


def test_widget_clicks_during_a_map_with_cells_queued(kernel):
    ids = send_all(kernel, [SLOW.format(out="qa").replace("range(24)", "range(60)"),
                            "import kubemagic; print('n', kubemagic.current().n)"])
    count = kernel.find_model("BoundedIntTextModel", description="engines")
    scale = kernel.find_model("ButtonModel", description="Scale")
    kernel.poll_iopub(0.5)
    kernel.set_value(count, value=3)
    kernel.click(scale)
    got, order = collect(kernel, ids)
    assert_clean(kernel, got, order, ids)
    assert [got[i].status for i in ids] == ["ok", "ok"]
    assert got[ids[1]].stdout == "n 3\n"  # the click ran during the map, before cell 2
    # Stop map: the cell ends cancelled; the queued cells (no stop_on_error) still run
    ids = send_all(kernel, [SLOW.format(out="qb").replace("range(24)", "range(600)"),
                            "print('after stop')", "print(len(qa))"], stop_on_error=False)
    stop = kernel.find_model("ButtonModel", description="Stop map")
    kernel.find_model("IntProgressModel", description="progress", max=600)  # under way
    kernel.click(stop)
    got, order = collect(kernel, ids)
    assert_clean(kernel, got, order, ids)
    assert got[ids[0]].status == "error" and "cancelled" in got[ids[0]].errors[0]
    assert [got[i].stdout for i in ids[1:]] == ["after stop\n", "60\n"]
