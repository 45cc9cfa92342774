"""kubemagic.teardown: a block no SIGINT splits, and a teardown that runs once, to its end,
whatever interrupts the caller (real signals to this process, in the main thread)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from kubemagic.teardown import Teardown, uninterrupted


def test_a_sigint_inside_the_block_is_raised_after_it():
    done = []
    with pytest.raises(KeyboardInterrupt), uninterrupted():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)  # a normal block would be interrupted here
        done.append(True)
    assert done == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_without_a_signal_the_block_just_runs():
    with uninterrupted():
        value = 1
    assert value == 1


class Session:
    """What lifetime.untrack is given (a session is tracked weakly)."""


class Fleet:
    def __init__(self):
        self.detached = 0

    def detach(self):
        self.detached += 1


class Controller:
    """Takes a while to stop, and says what failed."""

    def __init__(self):
        self.stops = 0
        self.finished = threading.Event()

    def stop(self):
        self.stops += 1
        time.sleep(0.5)
        self.finished.set()
        return "the Job could not be deleted"


def test_an_interrupted_wait_leaves_the_teardown_going_and_it_runs_once():
    fleet, controller, reports = Fleet(), Controller(), []
    teardown = Teardown(Session(), fleet, controller, report=reports.append)
    threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        teardown.run()
    assert not controller.finished.is_set()  # the caller got the interrupt at once
    teardown.run()  # again: waits for the same teardown
    assert controller.finished.is_set()
    assert (fleet.detached, controller.stops, reports) == (1, 1, ["the Job could not be deleted"])
