"""Pod states and start-up diagnostics from API-shaped pod dicts (as the API sends them)."""

from __future__ import annotations

from kubemagic.k8s.diagnose import explain, hint, registration_problem
from kubemagic.k8s.manifests import (
    COMPLETION_INDEX_ANNOTATION,
    EXIT_CONTROLLER_GONE,
    EXIT_TERMINATED,
)
from kubemagic.k8s.podstate import pod_state, slot_states

UNSCHEDULABLE_GPU = (
    "0/1 nodes are available: 1 Insufficient nvidia.com/gpu. preemption: 0/1 nodes are "
    "available: 1 No preemption victims found for incoming pod."
)


def pod(index, name=None, phase="Pending", created="2026-01-01T00:00:00Z", node="node1", **status):
    return {
        "metadata": {
            "name": name or f"job-{index}-abcde",
            "annotations": {COMPLETION_INDEX_ANNOTATION: str(index)},
            "creationTimestamp": created,
            **status.pop("meta", {}),
        },
        "spec": {"nodeName": node} if node else {},
        "status": {"phase": phase, **status},
    }


def unschedulable(index, message=UNSCHEDULABLE_GPU):
    return pod(
        index,
        node=None,
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": message,
            }
        ],
    )


def waiting(index, reason, message=""):
    return pod(
        index,
        containerStatuses=[
            {"name": "engine", "state": {"waiting": {"reason": reason, "message": message}}}
        ],
    )


def failed(index, code, message="", name=None, created="2026-01-01T00:00:00Z"):
    return pod(
        index,
        name=name,
        phase="Failed",
        created=created,
        containerStatuses=[
            {
                "name": "engine",
                "state": {"terminated": {"exitCode": code, "reason": "Error", "message": message}},
            }
        ],
    )


def running(index, name=None):
    return pod(
        index,
        name=name,
        phase="Running",
        containerStatuses=[{"name": "engine", "state": {"running": {}}}],
    )


def test_unschedulable_pod_quotes_scheduler():
    s = pod_state(unschedulable(2))
    assert (s.index, s.phase, s.reason) == (2, "Pending", "Unschedulable")
    assert "Insufficient nvidia.com/gpu" in s.message


def test_image_pull_backoff():
    s = pod_state(waiting(0, "ImagePullBackOff", 'Back-off pulling image "nope:1"'))
    assert (s.phase, s.reason) == ("Pending", "ImagePullBackOff")
    assert "nope:1" in s.message


def test_failed_pod_keeps_exit_code_and_termination_message():
    s = pod_state(failed(1, EXIT_CONTROLLER_GONE, "no registration reply from the controller"))
    assert (s.phase, s.exit_code) == ("Failed", EXIT_CONTROLLER_GONE)
    assert "no registration reply" in s.message


def test_deleting_pod_is_terminating():
    p = running(0)
    p["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:05Z"
    assert pod_state(p).phase == "Terminating"


def test_slot_states_newest_pod_per_index_and_missing_slots():
    old = failed(0, 1, name="job-0-old", created="2026-01-01T00:00:00Z")
    new = running(0, name="job-0-new")
    new["metadata"]["creationTimestamp"] = "2026-01-01T00:00:10Z"
    extra = running(5)  # index >= n: being scaled away
    states = slot_states([new, old, extra], 2)
    assert [s.index for s in states] == [0, 1]
    assert states[0].name == "job-0-new" and states[0].phase == "Running"
    assert states[1].reason == "NotCreated"
    assert set(states[0].as_dict()) >= {"index", "name", "phase", "reason", "message"}


def test_hints_name_the_flag_to_change():
    assert "--gpu" in hint(pod_state(unschedulable(0)))
    assert "--cpu" in hint(
        pod_state(unschedulable(0, "0/1 nodes are available: 1 Insufficient cpu."))
    )
    assert "--memory" in hint(
        pod_state(unschedulable(0, "0/1 nodes are available: 1 Insufficient memory."))
    )
    assert "--image" in hint(pod_state(waiting(0, "ImagePullBackOff")))
    assert "IfNotPresent" in hint(pod_state(waiting(0, "ErrImageNeverPull")))
    assert "tcp://1.2.3.4:47100" in hint(
        pod_state(failed(0, EXIT_CONTROLLER_GONE)), "tcp://1.2.3.4:47100"
    )
    assert hint(pod_state(running(0))) == ""
    assert hint(pod_state(failed(0, EXIT_TERMINATED))) == ""  # deleted on purpose


def test_registration_problem_from_log():
    stuck = "x INFO Loading connection info\nx INFO Registering with controller at tcp://10.0.0.9:47100\n"
    assert "tcp://10.0.0.9:47100" in registration_problem(stuck)
    assert registration_problem(stuck + "x INFO Completed registration with id 0\n") is None


def test_explain_quotes_everything_a_user_needs():
    pods = [
        running(0),
        unschedulable(1),
        waiting(2, "ImagePullBackOff", 'Back-off pulling image "nope:1"'),
        failed(
            3,
            EXIT_CONTROLLER_GONE,
            "no registration reply from the controller at tcp://10.0.0.9:47100",
            name="job-3-dead",
        ),
    ]
    text = explain(
        job_name="job",
        namespace="ns",
        n=3,
        job={
            "status": {
                "conditions": [
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "PodFailurePolicy",
                        "message": "Container engine for pod ns/job-3-dead failed with exit code 17",  # noqa: E501
                    }
                ]
            }
        },
        pods=pods,
        events={
            "job-2-abcde": [
                {
                    "type": "Warning",
                    "reason": "Failed",
                    "message": 'Failed to pull image "nope:1": not found',
                }
            ],
            "job": [
                {
                    "type": "Warning",
                    "reason": "FailedCreate",
                    "message": 'pods "job-4" is forbidden: exceeded quota: q',
                }
            ],
        },
        logs={
            "job-0-abcde": "Registering with controller at tcp://10.0.0.9:47100\nstill waiting\n"
        },
        controller_url="tcp://10.0.0.9:47100",
    )
    assert "1 of 3 engine pods running" in text
    assert "PodFailurePolicy" in text
    assert "Insufficient nvidia.com/gpu" in text
    assert 'Back-off pulling image "nope:1"' in text and "not found" in text
    assert "has not registered with the controller at tcp://10.0.0.9:47100" in text
    assert "earlier pod job-3-dead" in text and "exit code 17" in text
    assert "exceeded quota" in text
    for flag in ("--gpu", "--image", "--controller-address"):
        assert flag in text
    assert text.count("fix: check that --image") == 1  # hints are not repeated


def test_explain_for_a_vanished_job():
    text = explain(job_name="job", namespace="ns", n=1, job=None, pods=[])
    assert "no longer exists" in text and "NotCreated" in text


def test_refusal_quotes_the_newest_quota_event_since_the_wait_began():
    from kubemagic.k8s.diagnose import refusal

    quota = ('Error creating: pods "j-3" is forbidden: exceeded quota: kubemagic, '
             "requested: pods=1, used: pods=4, limited: pods=4")
    events = [
        {"reason": "SuccessfulCreate", "message": "Created pod: j-0",
         "lastTimestamp": "2026-11-29T08:00:05Z"},
        {"reason": "FailedCreate", "message": quota.replace("used: pods=4", "used: pods=3"),
         "lastTimestamp": "2026-11-29T07:00:00Z"},  # before this wait: not ours
        {"reason": "FailedCreate", "message": quota, "lastTimestamp": "2026-11-29T08:00:06Z"},
    ]
    from datetime import datetime

    since = datetime.fromisoformat("2026-11-29T08:00:00+00:00").timestamp()
    assert refusal(events, since) == quota
    assert refusal(events[:2], since) is None
    assert refusal([], since) is None
