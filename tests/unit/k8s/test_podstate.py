"""Job outcomes from API-shaped Job dicts (the one reading of terminal conditions), and
which failed pods are crashes (of which those before registration make a crash loop)."""

from __future__ import annotations

import pytest

from kubemagic.k8s.manifests import EXIT_CONTROLLER_GONE, EXIT_TERMINATED
from kubemagic.k8s.podstate import (OVERDUE_S, JobEnd, crash, crash_loop_size, deletion_overdue,
                                     job_end, lost_with_node)


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


# -- crashes: engines that failed on their own ----------------------------------------------
def pod(phase="Failed", exit_code=1, deleting=False, disrupted=False, message="boom\n"):
    status = {
        "phase": phase,
        "conditions": [{"type": "DisruptionTarget", "status": "True"}] if disrupted else [],
        "containerStatuses": [{
            "name": "engine",
            "state": {"terminated": {"exitCode": exit_code, "reason": "Error",
                                     "message": message}},
        }],
    }
    meta = {"name": "kubemagic-km-1-0-abcde", "creationTimestamp": "2026-01-01T00:00:00Z",
            "annotations": {"batch.kubernetes.io/job-completion-index": "0"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:09Z"
    return {"metadata": meta, "status": status}


def test_an_engine_that_failed_on_its_own_crashed():
    state = crash(pod(exit_code=3))
    assert state is not None and (state.index, state.exit_code, state.message) == (0, 3, "boom")
    assert crash(pod(exit_code=137, message="")) is not None  # OOM-killed


@pytest.mark.parametrize("kwargs", [
    {"phase": "Running"},
    {"exit_code": EXIT_TERMINATED},  # deleted or scaled away: replaced without counting
    {"exit_code": EXIT_CONTROLLER_GONE},  # fails the whole Job, which says so itself
    {"deleting": True, "exit_code": 137},  # killed by hand or by signal(SIGKILL)
    {"disrupted": True},  # evicted or preempted
])
def test_what_is_not_a_crash(kwargs):
    assert crash(pod(**kwargs)) is None


@pytest.mark.parametrize("n, size", [(1, 2), (2, 2), (3, 2), (5, 3), (100, 50)])
def test_a_crash_loop_is_half_the_slots_worth_of_crashes_and_never_one(n, size):
    assert crash_loop_size(n) == size


def _lost_pod(**changes: dict) -> dict:
    """An engine pod of a node that stopped answering, as the API showed it on the test
    cluster: Ready flipped by the node controller, ContainersReady left as the kubelet set
    it, and the taint manager deleting it."""
    conditions = {
        "Ready": {"type": "Ready", "status": "False"},
        "ContainersReady": {"type": "ContainersReady", "status": "True"},
        "DisruptionTarget": {"type": "DisruptionTarget", "status": "True",
                             "reason": "DeletionByTaintManager",
                             "message": "Taint manager: deleting due to NoExecute taint"},
    }
    for kind, change in changes.items():
        if change is None:
            conditions.pop(kind)
        else:
            conditions[kind] = {**conditions[kind], **change}
    return {"metadata": {"name": "p", "deletionTimestamp": "2026-11-29T16:09:14Z"},
            "status": {"phase": "Running", "conditions": list(conditions.values())}}


def test_a_pod_whose_node_stopped_answering_is_lost_with_it():
    assert lost_with_node(_lost_pod())


@pytest.mark.parametrize("changes", [
    {"DisruptionTarget": None},                                   # not being evicted
    {"DisruptionTarget": {"reason": "EvictionByEvictionAPI"}},    # drained: its kubelet ends it
    {"DisruptionTarget": {"status": "False"}},
    {"ContainersReady": {"status": "False"}},                     # the kubelet speaks: it ends it
    {"Ready": {"status": "True"}},
])
def test_a_pod_its_kubelet_can_still_end_is_not_lost(changes):
    assert not lost_with_node(_lost_pod(**changes))


def test_a_pod_not_being_deleted_or_already_ended_is_not_lost():
    pod = _lost_pod()
    del pod["metadata"]["deletionTimestamp"]
    assert not lost_with_node(pod)
    pod = _lost_pod()
    pod["status"]["phase"] = "Failed"
    assert not lost_with_node(pod)


@pytest.mark.parametrize("phase, past, overdue", [
    ("Pending", OVERDUE_S + 1, True),    # a lost node's pod that was still starting
    ("Running", OVERDUE_S + 1, True),
    ("Running", OVERDUE_S - 1, False),   # its kubelet may still be reporting the end
    ("Failed", OVERDUE_S + 60, False),   # ended: the Job has counted it
])
def test_a_pod_long_past_its_deletion_deadline_is_overdue(phase, past, overdue):
    pod = {"metadata": {"name": "p", "deletionTimestamp": "2026-11-29T16:09:14Z"},
           "status": {"phase": phase}}
    assert deletion_overdue(pod, past) is overdue
    del pod["metadata"]["deletionTimestamp"]
    assert not deletion_overdue(pod, past)
