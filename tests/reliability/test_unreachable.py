"""A controller address the engines cannot reach fails the start within its timeout,
naming the address and quoting the engines' own log lines — no silent hang, nothing left
behind (issue 5, item 6).

10.88.0.254 is on the pods' bridge network, routable from the pods, but nothing listens
there (it stays inside this machine). The launcher-level version of this check (without
the session) is ``tests/k8s/test_failures.py::test_unreachable_controller_address_fails_
fast_and_is_quoted``.
"""

from __future__ import annotations

import threading
import time

import pytest

from kubemagic.errors import StartupError

from ._support import (
    NOTHING,
    clean_process_env,
    leftovers,
    make_tenant,
    new_session,
    processes_of,
    seconds_until,
)

pytestmark = pytest.mark.cluster

WRONG = "10.88.0.254"
START_TIMEOUT = 25
#: beyond start_timeout: the diagnosis, and stopping what was started
HANG_MARGIN = 60


def test_wrong_controller_address_fails_within_the_start_timeout(k8s_cluster):
    tenant = make_tenant(k8s_cluster, "unreachable")
    with clean_process_env():
        s = new_session(k8s_cluster, tenant, controller_address=WRONG,
                        start_timeout=START_TIMEOUT)
        t0 = time.monotonic()
        outcome: dict = {}

        def start() -> None:  # in a thread: a hang must fail this test, not CI
            try:
                s.start()
            except BaseException as e:  # noqa: BLE001 - inspected below
                outcome["error"] = e

        thread = threading.Thread(target=start, daemon=True)
        thread.start()
        thread.join(START_TIMEOUT + HANG_MARGIN)
        took = time.monotonic() - t0
        assert not thread.is_alive(), (
            f"start() with an unreachable --controller-address still hangs after {took:.0f} s "
            f"(start_timeout {START_TIMEOUT} s)")
    error = outcome.get("error")
    assert isinstance(error, StartupError), repr(error)
    text = str(error)
    print(f"\nstart failed after {took:.1f} s (start_timeout {START_TIMEOUT} s):\n{text}")
    assert took < START_TIMEOUT + 20, "the diagnosis after the timeout must be quick"
    assert f"controller at {WRONG}" in text
    # the failed Job (FailJob on exit 17) ends the wait, not the start_timeout
    assert "the engines stopped after" in text
    # the engines' own words, from their pods
    assert f"no registration reply from the controller at tcp://{WRONG}:" in text
    assert "exit code 17" in text
    assert "--controller-address" in text and "how to fix" in text
    assert s.state == "failed"
    # nothing left: not in the cluster, not on this machine
    gone = seconds_until(lambda: leftovers(k8s_cluster, tenant.namespace) == NOTHING, 30)
    assert gone is not None, leftovers(k8s_cluster, tenant.namespace)
    assert seconds_until(lambda: not processes_of(s.cluster_id), 10) is not None
