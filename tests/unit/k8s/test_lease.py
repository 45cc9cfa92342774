"""The lease arithmetic and its renewal loop (kubemagic.k8s.lease), without a cluster.
The lease against a real Job controller: tests/reliability/test_cleanup_states.py."""

from __future__ import annotations

import time

import pytest

from kubemagic.k8s import lease


def test_first_deadline_is_one_lease_capped_by_the_users_deadline():
    assert lease.first_deadline(120, None) == 120
    assert lease.first_deadline(120, 60) == 60
    assert lease.first_deadline(0, 60) == 60
    assert lease.first_deadline(0, None) is None


def test_next_deadline_leaves_a_full_lease_from_now():
    assert lease.next_deadline(0.2, 120, None) == 121
    assert lease.next_deadline(300.0, 120, None) == 420
    assert lease.next_deadline(300.0, 120, 350) == 350  # never past the user's deadline


def test_renew_patches_only_when_the_deadline_moves_and_stops_at_the_cap():
    sent: list[dict] = []
    started = time.monotonic() - 10
    a = lease.Lease(sent.append, 30, None, started, lambda e: False)
    assert a.renew() and sent == [{"spec": {"activeDeadlineSeconds": 41}}]
    assert a.renew() and len(sent) == 1  # same second: nothing to send
    capped = lease.Lease(sent.append, 30, 35, started, lambda e: False)
    assert capped.renew() is False  # the user's own deadline is reached: nothing to renew
    assert sent[-1] == {"spec": {"activeDeadlineSeconds": 35}}


def test_the_thread_retries_failed_renewals_and_ends_when_the_job_is_gone(monkeypatch):
    monkeypatch.setattr(lease, "RETRY_SECONDS", 0.01)
    calls: list[int] = []

    class Gone(Exception):
        pass

    def patch(body):
        calls.append(body["spec"]["activeDeadlineSeconds"])
        raise (Gone() if len(calls) >= 3 else ConnectionError("apiserver restarting"))

    a = lease.Lease(patch, 4, None, time.monotonic(), lambda e: isinstance(e, Gone))
    a.start("job")
    a._thread.join(10)
    assert not a._thread.is_alive() and len(calls) == 3
    assert "apiserver restarting" in a.error


def test_no_lease_no_thread():
    a = lease.Lease(lambda b: None, 0, None, time.monotonic(), lambda e: False)
    a.start("job")
    assert a._thread is None


def test_seconds_since_is_never_negative():
    assert lease.seconds_since("2999-01-01T00:00:00Z") == 0.0
    assert lease.seconds_since("2000-01-01T00:00:00Z") > 0


def _answers(*answers):
    """A call that raises or returns each of ``answers`` in turn."""
    left = list(answers)

    def call():
        answer = left.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return call


def test_through_outage_retries_transient_failures_only(monkeypatch):
    import urllib3
    from kubernetes.client.exceptions import ApiException

    from kubemagic.errors import StartupError
    from kubemagic.k8s import client

    monkeypatch.setattr(client.time, "sleep", lambda s: None)
    call = _answers(urllib3.exceptions.ProtocolError("reset"), ApiException(status=503), "ok")
    assert client.through_outage(call, "scaling") == "ok"
    with pytest.raises(ApiException):  # not transient: at once, for api_call to explain
        client.through_outage(_answers(ApiException(status=403)), "scaling")
    with pytest.raises(StartupError, match="did not answer for 0 s, so scaling to 3"):
        client.through_outage(_answers(ConnectionRefusedError()), "scaling to 3 engines",
                              seconds=0)


def test_a_denial_right_after_an_outage_is_retried(monkeypatch):
    from kubernetes.client.exceptions import ApiException

    from kubemagic.k8s import client

    monkeypatch.setattr(client.time, "sleep", lambda s: None)
    call = _answers(ConnectionRefusedError(), ApiException(status=403), "ok")
    assert client.through_outage(call, "scaling") == "ok"
