"""``kubemagic doctor``'s pure parts: the rules it checks, its test Job, its listeners and
probe (real sockets on this machine), and how it judges what the probe reported."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time

import kubernetes.client as k8s
import pytest

from kubemagic.k8s.checks import FAIL, PASS, SKIP, Check, print_table
from kubemagic.k8s.doctor import role_rules
from kubemagic.k8s.doctor_pod import judge_image, judge_ports, parse_probe, probe_report
from kubemagic.k8s.listeners import Listeners
from kubemagic.k8s.manifests import ENGINE_POD_SELECTOR
from kubemagic.k8s.role import DIAGNOSTIC_RULES, ROLE_RULES
from kubemagic.k8s.podstate import PodState
from kubemagic.k8s.probe import DOCTOR_LABEL, PROBE_CONTAINER, probe_command, probe_job

REPORT = {"python": "3.11.7", "kubemagic": "0.1.0", "ipyparallel": "9.2.0"}
NET = "pods reach 10.0.0.5:29100-29199"


def state(phase="Pending", reason="", message="", exit_code=None):
    return PodState(index=None, name="kubemagic-doctor-abc-x", phase=phase, reason=reason,
                    message=message, exit_code=exit_code)


def wait_until(predicate, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


def test_doctor_checks_exactly_the_rules_of_the_rendered_role():
    assert role_rules("ns", "sa") == ROLE_RULES + DIAGNOSTIC_RULES


def test_probe_job_is_a_valid_job_shaped_like_an_engine_pod():
    job = probe_job(name="kubemagic-doctor-abc", namespace="ns", owner="alice@uni", image="img:1",
                    command=probe_command("10.0.0.5", [29100, 29199], "tok"), deadline_seconds=150)
    k8s.V1Job.model_validate(job)
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels.items() >= ENGINE_POD_SELECTOR.items()  # the engines' NetworkPolicy applies
    assert labels[DOCTOR_LABEL] == "probe" and labels["kubemagic.io/owner"] == "alice-uni"
    assert job["metadata"]["labels"] == labels
    spec = job["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"]) == (0, 150)
    pod = spec["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsUser"] == 1000 and pod["securityContext"]["runAsNonRoot"]
    (container,) = pod["containers"]
    assert container["name"] == PROBE_CONTAINER and container["image"] == "img:1"
    assert container["command"][:2] == ["python", "-c"]
    assert container["command"][3:] == ["10.0.0.5", "29100,29199", "tok"]


def test_listeners_spread_over_the_range_and_accept_only_the_token():
    lst = Listeners((29100, 29199), "secret-token", bind="127.0.0.1")
    try:
        assert len(lst.ports) == 3 and lst.ports[0] >= 29100 and lst.ports[-1] <= 29199
        first, last = lst.ports[0], lst.ports[-1]
        with socket.create_connection(("127.0.0.1", first)) as s:
            s.sendall(b"wrong\n")
        with socket.create_connection(("127.0.0.1", last)) as s:
            s.sendall(b"secret-token\n" + json.dumps(REPORT).encode() + b"\n")
        assert wait_until(lambda: last in lst.reached)
        assert lst.reached == {last} and lst.report == REPORT
    finally:
        lst.close()


def test_listeners_on_a_taken_range_have_no_ports():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        lst = Listeners((port, port), "t", bind="127.0.0.1")
        lst.close()
    assert lst.ports == []


def test_the_probe_reports_over_its_connections_and_on_stdout():
    """The very script the test pod runs, here against this machine's listeners."""
    lst = Listeners((29100, 29199), "tok", bind="127.0.0.1")
    try:
        python, *args = probe_command("127.0.0.1", lst.ports, "tok")
        assert python == "python"  # the image's; here this interpreter stands in for it
        res = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
        assert wait_until(lambda: lst.reached == set(lst.ports))
    finally:
        lst.close()
    report = parse_probe(res.stdout)
    assert report is not None and not report["kubemagic"].startswith("MISSING")
    assert report["ports"] == {str(p): "connected" for p in lst.ports}
    assert {k: lst.report[k] for k in ("python", "kubemagic")} == {
        k: report[k] for k in ("python", "kubemagic")
    }


def test_probe_report_sources():
    line = "noise\nKUBEMAGIC-DOCTOR " + json.dumps(REPORT) + "\n"
    assert probe_report(line, {"python": "other"}, 0) == REPORT  # stdout first
    assert probe_report("(log unavailable: forbidden)", REPORT, 0) == REPORT  # then the socket
    assert probe_report("KUBEMAGIC-DOCTOR {broken", None, 1) is None
    # no log and no connection: the exit code still tells what the image has
    assert probe_report("", None, 4)["kubemagic"] == "importable"
    assert probe_report("", None, 6)["kubemagic"] == "MISSING"
    assert probe_report("", None, 1) is None and probe_report("", None, None) is None


def test_judge_image():
    ok = judge_image("img", state("Succeeded", exit_code=0), REPORT, "", 120)
    assert ok == Check("image img", PASS, "pulled and ran: python 3.11.7, kubemagic 0.1.0, "
                       "ipyparallel 9.2.0")
    pull = judge_image("img", state(reason="ErrImagePull", message="not found"), None, "", 120)
    assert (pull.status, pull.detail) == (FAIL, "ErrImagePull: not found")
    assert "imagePullSecrets" in pull.fix
    stuck = judge_image("img", state(reason="CreateContainerError", message="x"), None, "", 1)
    assert stuck.status == FAIL and "uid 1000" in stuck.fix
    pending = judge_image("img", state(reason="Unschedulable", message="0/1 nodes"), None, "", 90)
    assert pending.status == FAIL and "did not start within 90 s" in pending.detail
    assert "--timeout" in pending.fix
    crashed = judge_image("img", state("Failed", exit_code=127), None, "python: not found", 90)
    assert "exit code 127" in crashed.detail and "output: python: not found" in crashed.detail
    assert "no pod was created" in judge_image("img", None, None, "", 90).detail
    missing = judge_image("img", state("Failed", exit_code=2),
                          {**REPORT, "kubemagic": "MISSING: ModuleNotFoundError"}, "", 90)
    assert missing.status == FAIL and missing.detail.startswith("runs, but")
    assert "images/Dockerfile" in missing.fix


def test_judge_ports():
    report = {**REPORT, "ports": {"29100": "connected", "29199": "ConnectionRefusedError: refused"}}
    ok = judge_ports(NET, "10.0.0.5", (29100, 29199), [29100, 29199], {29100, 29199}, report,
                     False, None)
    assert ok == Check(NET, PASS, "test pod connected to ports 29100,29199")
    args = (NET, "10.0.0.5", (29100, 29199), [29100, 29199], {29100}, report)
    policy = "NetworkPolicy singleuser isolates the kernel's pod for ingress"
    blocked = judge_ports(*args, False, policy)
    assert blocked.status == FAIL
    assert blocked.detail == (
        f"test pod could not connect to 29199: ConnectionRefusedError: refused; {policy}"
    )
    assert "NetworkPolicy ingress rule" in blocked.fix and "firewall" not in blocked.fix
    unknown = judge_ports(*args, False, None)
    assert "open firewalls" in unknown.fix
    loop = judge_ports(NET, "127.0.0.1", (29100, 29199), [29100], set(), {}, True, None)
    assert "29100: no report" in loop.detail and "127.0.0.1 is a loopback address" in loop.fix


@pytest.mark.parametrize("failing", [False, True])
def test_print_table(failing):
    checks = [Check("API reachable", PASS, "https://x"), Check("image", SKIP, "needs the API")]
    if failing:
        checks.append(Check("namespace ns", FAIL, "does not exist", "create it"))
    out = io.StringIO()
    print_table(checks, out)
    text = out.getvalue()
    assert text.startswith("PASS  API reachable  https://x\nSKIP  image          needs the API\n")
    if failing:
        assert "1 check(s) failed:\n- namespace ns: does not exist\n  how to fix: create it" in text
    else:
        assert text.endswith("all 2 checks passed: the Kubernetes backend can run here\n")
