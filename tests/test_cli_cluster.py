"""`kubemagic doctor | ls | clean` against the real test cluster, as a namespaced user.

Each test gets a fresh namespace and a service account ``alice`` whose kubeconfig holds a
bound token: with the Role `kubemagic rbac` prints every doctor check passes; without it
the permission checks fail naming the fix; a Role missing one rule fails exactly that row.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kubemagic.k8s.role import DIAGNOSTIC_RULES, ROLE_RULES
from kubemagic.k8s.rbac import render_rbac

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[1]
SA = "alice"


def kubemagic(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    return subprocess.run([sys.executable, "-m", "kubemagic", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO)


def apply(api, docs) -> None:
    """Create objects as the cluster admin (a real create, not a dry run)."""
    from kubernetes import utils

    for doc in docs:
        if doc:
            utils.create_from_dict(api, doc)


def rows(out: str) -> dict[str, tuple[str, str]]:
    """doctor's table: check name → (status, detail)."""
    table = {}
    for line in out.splitlines():
        m = re.match(r"^(PASS|FAIL|SKIP)  (.+?)\s{2,}(.*)$", line)
        if m:
            table[m[2].strip()] = (m[1], m[3])
    return table


@pytest.fixture
def user(k8s_cluster):
    """(namespace, kubeconfig of service account alice in it) — no rights yet."""
    ns = k8s_cluster.create_namespace("cli")
    return ns, k8s_cluster.service_account_kubeconfig(ns, SA)


def doctor(k8s_cluster, kubeconfig: str, *extra: str) -> subprocess.CompletedProcess:
    return kubemagic("doctor", "--kubeconfig", kubeconfig, "--image", k8s_cluster.image,
                     "--controller-address", k8s_cluster.host_ip, "--timeout", "90", *extra)


def test_doctor_passes_with_the_minimal_role(k8s_cluster, user):
    ns, kubeconfig = user
    docs = [d for d in yaml.safe_load_all(render_rbac(ns, SA)) if d and d["kind"] != "ServiceAccount"]
    apply(k8s_cluster.api, docs)
    res = doctor(k8s_cluster, kubeconfig)
    assert res.returncode == 0, res.stdout + res.stderr
    table = rows(res.stdout)
    assert all(status == "PASS" for status, _ in table.values()), res.stdout
    assert f"system:serviceaccount:{ns}:{SA}" in table["API reachable"][1]
    assert table[f"namespace {ns}"][0] == "PASS"
    perms = [k for k in table if k.startswith("may ")]
    assert len(perms) == sum(len(r["resources"]) * len(r["apiGroups"]) for r in ROLE_RULES + DIAGNOSTIC_RULES)
    assert "kubemagic 0.1.0" in table[f"image {k8s_cluster.image}"][1]
    net = next(v for k, v in table.items() if k.startswith(f"pods reach {k8s_cluster.host_ip}:"))
    assert net[1].startswith("test pod connected to ports")
    assert f"all {len(table)} checks passed" in res.stdout and len(table) == 4 + len(perms)
    _no_probe_left(k8s_cluster, ns)


def test_doctor_without_the_role_fails_the_permission_checks_with_the_fix(k8s_cluster, user):
    ns, kubeconfig = user
    res = doctor(k8s_cluster, kubeconfig)
    assert res.returncode == 1
    table = rows(res.stdout)
    assert table["API reachable"][0] == "PASS"
    perms = {k: v for k, v in table.items() if k.startswith("may ")}
    assert perms and all(status == "FAIL" for status, _ in perms.values()), res.stdout
    assert perms["may create,get,list,watch,patch,delete jobs.batch"][1].startswith("denied: create")
    # the image and network checks could not run: skipped, not claimed as failures
    assert table[f"image {k8s_cluster.image}"][0] == "SKIP"
    fix = f"`kubemagic rbac --namespace {ns} --service-account {SA} | kubectl apply -f -`"
    assert res.stdout.count(fix) == len(perms)
    assert f"{len(perms)} check(s) failed" in res.stdout


def test_doctor_names_exactly_the_missing_rule(k8s_cluster, user):
    ns, kubeconfig = user
    role = [d for d in yaml.safe_load_all(render_rbac(ns, SA)) if d and d["kind"] in ("Role", "RoleBinding")]
    role[0]["rules"] = [r for r in role[0]["rules"] if r["resources"] != ["pods/log"]]
    apply(k8s_cluster.api, role)
    res = doctor(k8s_cluster, kubeconfig)
    assert res.returncode == 1
    failed = {k: v for k, v in rows(res.stdout).items() if v[0] == "FAIL"}
    assert list(failed) == ["may get pods/log"], res.stdout
    assert failed["may get pods/log"][1] == "denied: get"


def test_doctor_bad_image_and_loopback_address(k8s_cluster, user):
    ns, kubeconfig = user
    apply(k8s_cluster.api, [d for d in yaml.safe_load_all(render_rbac(ns, SA))
                            if d and d["kind"] in ("Role", "RoleBinding")])
    res = kubemagic("doctor", "--kubeconfig", kubeconfig, "--image", "kubemagic-engine:no-such-tag",
                    "--controller-address", k8s_cluster.host_ip, "--timeout", "90")
    assert res.returncode == 1
    status, detail = rows(res.stdout)["image kubemagic-engine:no-such-tag"]
    assert status == "FAIL" and re.match(r"(ErrImagePull|ImagePullBackOff)", detail), res.stdout
    assert "how to fix: check the image name" in res.stdout

    res = doctor(k8s_cluster, kubeconfig, "--controller-address", "127.0.0.1")
    assert res.returncode == 1
    table = rows(res.stdout)
    assert table[f"image {k8s_cluster.image}"][0] == "PASS"
    status, detail = next(v for k, v in table.items() if k.startswith("pods reach 127.0.0.1:"))
    assert status == "FAIL" and "Connection refused" in detail
    assert "127.0.0.1 is a loopback address" in res.stdout
    _no_probe_left(k8s_cluster, ns)


def _fake_engine_job(ns: str, name: str, owner: str, n: int) -> list[dict]:
    labels = {"app.kubernetes.io/name": "kubemagic", "app.kubernetes.io/component": "engine",
              "kubemagic.io/owner": owner}
    job = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"completionMode": "Indexed", "completions": n, "parallelism": n,
                 "template": {"metadata": {"labels": labels}, "spec": {
                     "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                     "automountServiceAccountToken": False,
                     "containers": [{"name": "engine", "image": "kubemagic-engine:dev",
                                     "command": ["python3", "-c", "import time; time.sleep(900)"]}]}}},
    }
    secret = {"apiVersion": "v1", "kind": "Secret",
              "metadata": {"name": name, "namespace": ns, "labels": labels},
              "stringData": {"IPP_CONNECTION_INFO": "{}"}}
    return [job, secret]


def test_ls_and_clean(k8s_cluster, user):
    from kubernetes import client

    ns, kubeconfig = user
    apply(k8s_cluster.api, [d for d in yaml.safe_load_all(render_rbac(ns, SA))
                            if d and d["kind"] in ("Role", "RoleBinding")])
    apply(k8s_cluster.api, _fake_engine_job(ns, "kubemagic-km-bob00001", "bob", 2)
          + _fake_engine_job(ns, "kubemagic-km-carol001", "carol", 1))
    batch, core = client.BatchV1Api(k8s_cluster.api), client.CoreV1Api(k8s_cluster.api)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until the engines are ready
        res = kubemagic("ls", "--kubeconfig", kubeconfig)
        if "2/2" in res.stdout and "1/1" in res.stdout:
            break
        time.sleep(1)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["NAME", "OWNER", "AGE", "ENGINES", "STATE"]
    table = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert table["kubemagic-km-bob00001"][0] == "bob" and table["kubemagic-km-bob00001"][2:] == ["2/2", "Running"]
    assert table["kubemagic-km-carol001"][0] == "carol" and table["kubemagic-km-carol001"][2:] == ["1/1", "Running"]

    # not ours (we are alice's user on this machine, not bob): nothing to clean by default
    dry = kubemagic("clean", "--kubeconfig", kubeconfig, "--owner", "bob", "--dry-run")
    assert dry.returncode == 0
    assert "would delete job/kubemagic-km-bob00001" in dry.stdout
    assert "would delete secret/kubemagic-km-bob00001" in dry.stdout
    assert "carol" not in dry.stdout
    assert len(batch.list_namespaced_job(ns).items) == 2  # a dry run deletes nothing

    res = kubemagic("clean", "--kubeconfig", kubeconfig, "--owner", "bob")
    assert res.returncode == 0, res.stdout + res.stderr
    assert [j.metadata.name for j in batch.list_namespaced_job(ns).items] == ["kubemagic-km-carol001"]
    # foreground deletion: bob's pods are gone when clean returns; the Secret too
    pods = core.list_namespaced_pod(ns, label_selector="kubemagic.io/owner=bob").items
    assert not [p for p in pods if not p.metadata.deletion_timestamp], pods
    with pytest.raises(client.ApiException) as e:
        core.read_namespaced_secret("kubemagic-km-bob00001", ns)
    assert e.value.status == 404

    res = kubemagic("clean", "--kubeconfig", kubeconfig, "--all-owners")
    assert res.returncode == 0 and "deleting job/kubemagic-km-carol001" in res.stdout
    assert batch.list_namespaced_job(ns).items == []
    assert "no kubemagic Jobs" in kubemagic("ls", "--kubeconfig", kubeconfig).stdout
    assert "nothing to clean" in kubemagic("clean", "--kubeconfig", kubeconfig, "--all-owners").stdout


def _no_probe_left(k8s_cluster, ns: str) -> None:
    from kubernetes import client

    jobs = client.BatchV1Api(k8s_cluster.api).list_namespaced_job(
        ns, label_selector="kubemagic.io/doctor").items
    assert all(j.metadata.deletion_timestamp for j in jobs), [j.metadata.name for j in jobs]
