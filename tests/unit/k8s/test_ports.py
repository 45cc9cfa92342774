"""The controller's port window: random, free, and claimed against other kernels."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from kubemagic.errors import UsageError
from kubemagic.k8s.ports import claim_port_window, free_port_window

#: two windows of 20 ports, apart from the default range (29100-29199) and below Linux's
#: ephemeral range (32768-60999), where outgoing connections would occupy ports at random
LOW, HIGH = 28700, 28739


def test_claimed_windows_are_distinct_until_released():
    first = claim_port_window(LOW, HIGH)
    second = claim_port_window(LOW, HIGH)
    try:
        assert {first.ports[0], second.ports[0]} == {LOW, LOW + 20}
        assert len(first.ports) == 20 and first.ports == list(range(first.ports[0],
                                                                    first.ports[0] + 20))
        with pytest.raises(UsageError, match="no 20 free consecutive ports"):
            claim_port_window(LOW, HIGH)
    finally:
        first.release()
        first.release()  # idempotent
    again = claim_port_window(LOW, HIGH)
    assert again.ports == first.ports
    again.release()
    second.release()


def test_a_bound_port_takes_its_window_out():
    with socket.socket() as s:
        s.bind(("0.0.0.0", LOW + 25))
        s.listen()
        for _ in range(5):
            assert free_port_window(LOW, HIGH)[0] == LOW


def test_a_claim_held_by_another_process_is_respected_until_it_exits():
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom kubemagic.k8s.ports import claim_port_window\n"
         f"c = claim_port_window({LOW}, {LOW + 19})\nprint(c.ports[0], flush=True)\n"
         "sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == str(LOW)
        with pytest.raises(UsageError):
            claim_port_window(LOW, LOW + 19)
    finally:
        child.stdin.close()  # the child exits: the kernel's lock goes with it
        child.wait(10)
    free_port_window(LOW, LOW + 19)
