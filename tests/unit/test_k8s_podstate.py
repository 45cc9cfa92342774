"""Job outcomes from API-shaped Job dicts: the one reading of terminal conditions."""

from __future__ import annotations

import pytest

from kubemagic.k8s.podstate import JobEnd, job_end


def job(*conditions):
    return {"metadata": {"name": "kubemagic-km-1"}, "status": {"conditions": list(conditions)}}


def cond(kind, status="True", reason="", message=""):
    return {"type": kind, "status": status, "reason": reason, "message": message}


def test_a_running_job_has_not_ended():
    assert job_end(job()) is None
    assert job_end({"metadata": {}}) is None
    assert job_end(None) is None  # a Job that vanished tells nothing either
    assert job_end(job(cond("Suspended"))) is None


def test_failed_and_complete():
    failed = job(cond("Failed", reason="PodFailurePolicy", message=" exit code 17 \n"))
    assert job_end(failed) == JobEnd(True, "PodFailurePolicy", "exit code 17")
    assert job_end(job(cond("Complete"))) == JobEnd(False)


def test_conditions_that_are_not_true_do_not_count():
    assert job_end(job(cond("Failed", status="False"), cond("Complete", status="Unknown"))) is None


@pytest.mark.parametrize(
    "early, failed", [("FailureTarget", True), ("SuccessCriteriaMet", False)]
)
def test_the_outcome_is_known_before_the_pods_are_gone(early, failed):
    """Kubernetes >= 1.31 decides the outcome first, and sets Failed/Complete later."""
    assert job_end(job(cond(early, reason="BackoffLimitExceeded"))) == JobEnd(
        failed, "BackoffLimitExceeded"
    )


def test_the_final_condition_wins_over_the_early_one():
    both = job(cond("FailureTarget", reason="early"), cond("Failed", reason="final"))
    assert job_end(both) == JobEnd(True, "final")


def test_missing_reason_and_message_are_empty_not_none():
    end = job_end(job({"type": "Failed", "status": "True"}))
    assert end == JobEnd(True, "", "")
