"""``kubemagic ls``'s rows from API-shaped Job dicts: state, age, engines, the table."""

from __future__ import annotations

import datetime as dt
import io

import pytest

from kubemagic.k8s import admin

NOW = dt.datetime(2025, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
JOB = {
    "metadata": {
        "name": "kubemagic-km-1",
        "namespace": "ns",
        "labels": {"kubemagic.io/owner": "alice"},
        "creationTimestamp": "2025-01-01T11:00:00Z",
    },
    "spec": {"parallelism": 4},
    "status": {"ready": 3},
}


def test_job_row():
    row = admin.job_row(JOB, NOW)
    assert (row.namespace, row.name, row.owner) == ("ns", "kubemagic-km-1", "alice")
    assert (row.ready, row.requested, row.state, row.age_s) == (3, 4, "Running", 3600.0)
    suspended = admin.job_row({**JOB, "spec": {"suspend": True, "parallelism": 4}}, NOW)
    assert suspended.requested == 0  # a parked Job asks for no engines
    future = {**JOB, "metadata": {**JOB["metadata"], "creationTimestamp": "2025-01-01T13:00:00Z"}}
    assert admin.job_row(future, NOW).age_s == 0.0  # clock skew never shows a negative age
    assert admin.job_row({}, NOW).age_s == 0.0


def _with_status(**status):
    return {**JOB, "status": status}


@pytest.mark.parametrize(
    "job, state",
    [
        (JOB, "Running"),
        (_with_status(), "Starting"),
        ({**JOB, "spec": {"suspend": True}}, "Suspended"),
        ({**JOB, "spec": {"parallelism": 0}}, "Idle"),
        ({**JOB, "metadata": {**JOB["metadata"], "deletionTimestamp": "x"}}, "Deleting"),
        (
            _with_status(
                conditions=[{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]
            ),
            "Failed (PodFailurePolicy)",
        ),
        (_with_status(conditions=[{"type": "Failed", "status": "True"}]), "Failed"),
        # decided, pods still terminating (Kubernetes >= 1.31): already shown as failed
        (
            _with_status(
                ready=1,
                conditions=[
                    {"type": "FailureTarget", "status": "True", "reason": "DeadlineExceeded"}
                ],
            ),
            "Failed (DeadlineExceeded)",
        ),
        (_with_status(conditions=[{"type": "Complete", "status": "True"}]), "Complete"),
        (_with_status(ready=2, conditions=[{"type": "Failed", "status": "False"}]), "Running"),
    ],
)
def test_job_state(job, state):
    assert admin.job_state(job) == state


def test_format_age_is_kubectl_style():
    ages = [5, 119, 120, 600, 3600, 7500, 86400, 200000]
    shown = ["5s", "119s", "2m", "10m", "1h", "2h5m", "1d", "2d7h"]
    assert [admin.format_age(s) for s in ages] == shown


def test_print_jobs():
    row = admin.job_row(JOB, NOW)
    out = io.StringIO()
    admin.print_jobs([row], out=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["NAME", "OWNER", "AGE", "ENGINES", "STATE"]
    assert lines[1].split() == ["kubemagic-km-1", "alice", "1h", "3/4", "Running"]
    out = io.StringIO()
    admin.print_jobs([row], show_namespace=True, out=out)
    assert out.getvalue().splitlines()[1].split()[:2] == ["ns", "kubemagic-km-1"]
    out = io.StringIO()
    admin.print_jobs([], out=out)
    assert out.getvalue() == "no kubemagic Jobs\n"
