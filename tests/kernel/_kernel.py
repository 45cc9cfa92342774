"""A real IPython kernel driven over its ZMQ channels, for tests that need more than nbclient
(sending widget messages while a cell runs, killing the kernel mid-map)."""

from __future__ import annotations

import queue
import subprocess
import sys
import time
from typing import Any

from jupyter_client.manager import start_new_kernel


def ensure_kernelspec() -> None:
    """Make ``python3`` mean this interpreter (the .venv with kubemagic installed)."""
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix",
                    "--name", "python3"], check=True, capture_output=True)


class Kernel:
    """Start a kernel; run cells; collect iopub messages per cell."""

    log_file = None  # subclasses that start their kernel themselves keep no log

    def __init__(self, log_path: str | None = None) -> None:
        """``log_path``: the kernel's own stdout/stderr (its log) go to this file."""
        ensure_kernelspec()
        self.log_file = open(log_path, "w") if log_path else None  # noqa: SIM115
        extra = {"stdout": self.log_file, "stderr": self.log_file} if self.log_file else {}
        self.km, self.kc = start_new_kernel(kernel_name="python3", **extra)
        self.comms: dict[str, dict[str, Any]] = {}  # comm_id -> widget state

    def pid(self) -> int:
        return int(self.run("import os; print(os.getpid())").strip())

    def submit(self, code: str) -> str:
        return self.kc.execute(code)

    def collect(self, msg_id: str, timeout: float = 120) -> tuple[str, list[dict]]:
        """Wait for the cell's idle status; return (stdout text, error outputs)."""
        out, errors = [], []
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"cell {msg_id} did not finish in {timeout} s") from None
            self._track_comm(msg)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            t, c = msg["msg_type"], msg["content"]
            if t == "stream":
                out.append(c["text"])
            elif t == "error":
                errors.append(c)
            elif t == "status" and c["execution_state"] == "idle":
                return "".join(out), errors

    def poll_iopub(self, seconds: float) -> None:
        """Read iopub for a while, tracking widget models (comm_open/comm_msg)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self._track_comm(self.kc.get_iopub_msg(timeout=0.05))
            except queue.Empty:
                pass

    def _track_comm(self, msg: dict) -> None:
        c = msg["content"]
        if msg["msg_type"] == "comm_open":
            self.comms[c["comm_id"]] = dict(c["data"].get("state", {}))
        elif msg["msg_type"] == "comm_msg" and c["data"].get("method") == "update":
            self.comms.setdefault(c["comm_id"], {}).update(c["data"].get("state", {}))

    def run(self, code: str, timeout: float = 120) -> str:
        text, errors = self.collect(self.submit(code), timeout)
        if errors:
            raise AssertionError(f"cell failed: {errors[0]['ename']}: {errors[0]['evalue']}")
        return text

    def run_error(self, code: str, timeout: float = 120) -> dict:
        """Run a cell that must fail; return its single error output."""
        _, errors = self.collect(self.submit(code), timeout)
        assert len(errors) == 1, f"expected one error, got {errors}"
        return errors[0]

    def find_model(self, model_name: str, timeout: float = 30, **state: Any) -> str:
        """The comm id of a displayed widget model, waiting for it to appear."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for cid, st in self.comms.items():
                if st.get("_model_name") == model_name and all(
                        st.get(k) == v for k, v in state.items()):
                    return cid
            self.poll_iopub(0.2)
        raise LookupError(f"no {model_name} with {state}; models: "
                          f"{[s.get('_model_name') for s in self.comms.values()]}")

    def send_comm(self, comm_id: str, data: dict) -> None:
        msg = self.kc.session.msg("comm_msg", {"comm_id": comm_id, "data": data})
        self.kc.shell_channel.send(msg)

    def click(self, comm_id: str) -> None:
        self.send_comm(comm_id, {"method": "custom", "content": {"event": "click"}})

    def set_value(self, comm_id: str, **state: Any) -> None:
        self.send_comm(comm_id, {"method": "update", "state": state, "buffer_paths": []})

    def shutdown(self) -> None:
        try:
            self.kc.stop_channels()
        finally:
            if self.km.is_alive():
                self.km.shutdown_kernel(now=False)
            if self.log_file is not None:
                self.log_file.close()
