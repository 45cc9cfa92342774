"""Run an ipyparallel entry point so that it dies with the kernel that started it.

``python -m kubemagic._guard MODULE [args...]`` arms ``PR_SET_PDEATHSIG`` (SIGKILL) and then
runs ``python -m MODULE args...`` in the same process. ipyparallel starts its controller and
local engines with ``start_new_session=True`` so they survive a SIGKILLed kernel and linger
(engines ~150 s); the death signal makes the kernel's death theirs, immediately, without
an extra watchdog process.

The kernel must start them from a thread that lives as long as the kernel (the session's
loop thread): Linux sends the signal when the *thread* that forked the child exits.
"""

from __future__ import annotations

import ctypes
import json
import os
import runpy
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
PARENT_PID_ENV = "KUBEMAGIC_PARENT_PID"
#: ZeroMQ I/O threads of the controller process (set by the kernel, read by _controller.py)
IO_THREADS_ENV = "KUBEMAGIC_ZMQ_IO_THREADS"


def _set_pdeathsig() -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def arm_parent_death_signal() -> None:
    """Ask Linux to SIGKILL us when our parent dies; exit now if it already has.

    The setting is not inherited across fork, and ipcontroller forks helper processes
    even with ``use_threads``; re-arming in every forked child makes the whole tree
    follow the kernel down (each child dies with the process that forked it).
    """
    _set_pdeathsig()
    os.register_at_fork(after_in_child=_set_pdeathsig)
    expected = os.environ.get(PARENT_PID_ENV)
    if expected and os.getppid() != int(expected):
        # the parent died between fork and prctl: nobody will signal us
        os._exit(1)


#: how long an engine started beside a booting controller waits for its connection file
CONNECTION_FILE_WAIT_S = 60.0


def wait_for_connection_file() -> None:
    """Local engines start while the controller boots (their imports overlap its own,
    ~0.5 s of a cold start); before ipengine reads the connection file, wait until the
    controller has written all of it. Its write is not atomic, and a truncated JSON object
    never parses, so "parses" means "complete". Without ``IPP_PROFILE_DIR`` or with the
    info in ``$IPP_CONNECTION_INFO`` there is nothing to wait for.
    """
    profile, cluster_id = os.environ.get("IPP_PROFILE_DIR"), os.environ.get("IPP_CLUSTER_ID")
    if not profile or os.environ.get("IPP_CONNECTION_INFO"):
        return
    import ipyparallel.engine.app  # noqa: F401 - the point: import while the controller boots

    name = f"ipcontroller-{cluster_id}-engine.json" if cluster_id else "ipcontroller-engine.json"
    path = os.path.join(profile, "security", name)
    deadline = time.monotonic() + CONNECTION_FILE_WAIT_S
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                json.load(f)
            return
        except (OSError, ValueError):
            time.sleep(0.01)
    # give up quietly: ipengine reports the missing controller in its own words


def main() -> None:
    arm_parent_death_signal()
    module = sys.argv[1]
    if module == "ipyparallel.engine":
        wait_for_connection_file()
    sys.argv = [module] + sys.argv[2:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
