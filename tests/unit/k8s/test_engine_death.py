"""What an engine pod died of, from API-shaped pod dicts: the container's terminated state
and memory limit (podstate.termination), put in words by kubemagic.deaths, as the
launcher's ``engine_death`` reads them from its watch mirror."""

from __future__ import annotations

from types import SimpleNamespace

from kubemagic.deaths import of_container
from kubemagic.k8s.jobview import JobObserver
from kubemagic.k8s.podstate import termination


def pod(name="kubemagic-km-1-0-abcde", terminated=None, memory="64Mi", phase="Failed"):
    container = {"name": "engine", "state": {"terminated": terminated} if terminated else
                 {"running": {}}}
    resources = {"limits": {"memory": memory}} if memory else {}
    return {"metadata": {"name": name},
            "spec": {"containers": [{"name": "engine", "resources": resources}]},
            "status": {"phase": phase, "containerStatuses": [container]}}


def test_an_oom_killed_container_gives_its_reason_code_and_limit():
    oom = pod(terminated={"reason": "OOMKilled", "exitCode": 137})
    assert termination(oom) == ("OOMKilled", 137, "64Mi")
    assert "memory limit of 64Mi" in of_container(*termination(oom)).cause


def test_a_crash_without_limit_and_a_running_pod():
    assert termination(pod(terminated={"reason": "Error", "exitCode": 139}, memory="")) == (
        "Error", 139, "")
    assert termination(pod(phase="Running")) is None


class Observer(JobObserver):
    """The launcher's observer with a mirror that holds recorded pods."""

    def __init__(self, pods):
        self._mirror = SimpleNamespace(pods_with_history=lambda: pods)


def test_engine_death_finds_the_engines_own_pod_among_the_slots_pods():
    pods = [pod("job-0-old", {"reason": "Error", "exitCode": 3}),
            pod("job-0-new", {"reason": "OOMKilled", "exitCode": 137}, memory="1Gi"),
            pod("job-1-abc", phase="Running")]
    observer = Observer(pods)
    death = observer.engine_death(SimpleNamespace(ident="job-0-new"))
    assert death is not None and death.kind == "oom" and "1Gi" in death.cause
    assert observer.engine_death(SimpleNamespace(ident="job-0-old")).cause == (
        "the engine process exited with code 3")
    assert observer.engine_death(SimpleNamespace(ident="job-1-abc")) is None  # still runs
    assert observer.engine_death(SimpleNamespace(ident="")) is None  # identity unknown
