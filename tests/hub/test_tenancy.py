"""Two researchers on one hub, with NetworkPolicies enforced: isolation, kernel lifecycle,
admin limits and ``kubemagic doctor``, each in servers spawned by the real JupyterHub.

Every network check is a real TCP connection between real pods (kube-router enforces the
policies), with a control connection that must succeed, so no check passes by accident.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from contextlib import contextmanager

import pytest

from .conftest import spawned_user
from .test_spawn import KUBEMAGIC_SELECTOR, _kubemagic_objects

pytestmark = pytest.mark.cluster

REFUSED = {"ConnectionRefusedError", "TimeoutError", "timeout", "OSError"}

#: kernel code: the controller's listening ports (from /proc, no tools needed) and pod IP
FIND_CONTROLLER = """
import json, os
rows = [l.split() for l in open('/proc/net/tcp').read().splitlines()[1:]]
ports = sorted({int(r[1].split(':')[1], 16) for r in rows  # listening on every interface
                if r[3] == '0A' and r[1].startswith('00000000:')
                and 29100 <= int(r[1].split(':')[1], 16) <= 29199})
print(json.dumps({"ip": os.environ["KUBEMAGIC_POD_IP"], "ports": ports}))
"""

PROBE_DEF = """
def probe(target, patience=8.0):
    # retried: a policy engine admits a new pod's traffic a moment after the pod starts
    import socket, time
    deadline = time.monotonic() + patience
    while True:
        try:
            socket.create_connection(tuple(target), timeout=2).close()
            return 'open'
        except Exception as e:
            if time.monotonic() > deadline:
                return type(e).__name__
            time.sleep(0.5)
"""


@contextmanager
def spawned(hub, k8s_cluster, prefix: str):
    """A fresh user with a running server and a kernel in it; all removed afterwards."""
    with spawned_user(hub, k8s_cluster, prefix) as user:
        kernel = user.kernel()
        try:
            yield user, kernel
        finally:
            kernel.ws.close()


def run(kernel, code: str, timeout: float = 300) -> str:
    r = kernel.execute(code, timeout=timeout)
    assert r["status"] == "ok", r
    return r["stdout"]


def probe_from_pod(k8s_cluster, namespace: str, labels: dict, targets: list) -> list[str]:
    """Connect to each target from a new pod with ``labels`` (admin-created), return results."""
    name = f"probe-{uuid.uuid4().hex[:6]}"
    label_args = ",".join(f"{k}={v}" for k, v in labels.items())
    script = (PROBE_DEF + "import json\n"
              f"print('RESULT ' + json.dumps([probe(t) for t in {targets!r}]))")
    k8s_cluster.run_kubectl(
        "run", name, "-n", namespace, f"--image={k8s_cluster.image}", "--image-pull-policy=Never",
        "--restart=Never", f"--labels={label_args}", "--command", "--", "python", "-c", script)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            phase = k8s_cluster.run_kubectl("get", "pod", name, "-n", namespace, "-o",
                                            "jsonpath={.status.phase}").stdout
            if phase in ("Succeeded", "Failed"):
                break
            time.sleep(0.5)
        log = k8s_cluster.run_kubectl("logs", name, "-n", namespace).stdout
        line = [x for x in log.splitlines() if x.startswith("RESULT ")]
        assert line, f"probe pod {name} ({phase}) printed no result:\n{log}"
        return json.loads(line[0][len("RESULT "):])
    finally:
        k8s_cluster.run_kubectl("delete", "pod", name, "-n", namespace, "--wait=false",
                                check=False)


def test_two_users_are_isolated(hub, k8s_cluster):
    with spawned(hub, k8s_cluster, "alice") as (alice, ka), \
            spawned(hub, k8s_cluster, "bob") as (bob, kb):
        run(ka, "%load_ext kubemagic\n" + PROBE_DEF)
        run(ka, "%%kubemap abs [-1, -2] -n 2 --out warm\npass\n")
        ctl = json.loads(run(ka, FIND_CONTROLLER))
        assert ctl["ports"], f"no controller port listening in alice's pod: {ctl}"
        target = [ctl["ip"], ctl["ports"][0]]
        bob_ip = json.loads(run(kb, "import os, json\nprint(json.dumps(os.environ['KUBEMAGIC_POD_IP']))"))

        # in alice's namespace: a pod labelled as an engine gets through (the control), one
        # without the labels does not
        engine_labels = {"app.kubernetes.io/name": "kubemagic",
                         "app.kubernetes.io/component": "engine"}
        assert probe_from_pod(k8s_cluster, alice.namespace, engine_labels, [target]) == ["open"]
        unlabelled = probe_from_pod(k8s_cluster, alice.namespace, {"app": "intruder"}, [target])
        assert set(unlabelled) <= REFUSED, unlabelled

        # bob's notebook and bob's engines cannot reach alice's controller; even bob's
        # engines, labelled as engines, are in the wrong namespace
        run(kb, "%load_ext kubemagic\n" + PROBE_DEF)
        from_bob = json.loads(run(kb, f"import json\nprint(json.dumps(probe({target!r})))"))
        assert from_bob in REFUSED, from_bob
        run(kb, f"%%kubemap probe [{target!r}] -n 1 --out reach\npass\n")
        bob_engines = json.loads(run(kb, "print(json.dumps(reach))"))
        assert set(bob_engines) <= REFUSED, bob_engines

        # alice's engines: only their own controller. Not the API server, not bob's notebook
        # pod, not another private address -- tested from inside a mapped function
        others = [[k8s_cluster.host_ip, 6443], [bob_ip, 8888], [k8s_cluster.host_ip, 8081],
                  [k8s_cluster.host_ip, 10250]]
        run(ka, f"%%kubemap probe {others!r} --out reach\npass\n")
        alice_engines = json.loads(run(ka, "print(json.dumps(reach))"))
        assert set(alice_engines) <= REFUSED, dict(zip(map(str, others), alice_engines))
        # ... while the controller connection keeps working
        assert run(ka, "%kubemap abs [-5, -6] --out ok\nprint(ok)").strip() == "[5, 6]"

        # bob's kernel, as bob's service account, can neither see nor touch alice's objects
        denied = json.loads(run(kb, f"""
import json
from kubernetes import client, config
config.load_incluster_config()
core, batch = client.CoreV1Api(), client.BatchV1Api()
ns = {alice.namespace!r}
calls = {{
    "list jobs": lambda: batch.list_namespaced_job(ns),
    "list pods": lambda: core.list_namespaced_pod(ns),
    "list secrets": lambda: core.list_namespaced_secret(ns),
    "delete jobs": lambda: batch.delete_collection_namespaced_job(ns),
    "delete pods": lambda: core.delete_collection_namespaced_pod(ns),
    "read pod": lambda: core.read_namespaced_pod("jupyter-{alice.name}", ns),
}}
out = {{}}
for what, call in calls.items():
    try:
        call()
        out[what] = "ALLOWED"
    except client.ApiException as e:
        out[what] = e.status
print(json.dumps(out))
"""))
        assert set(denied.values()) == {403}, denied
        # alice's session is untouched
        assert _kubemagic_objects(k8s_cluster, alice.namespace)["pods"], "alice's engines vanished"


def _wait_clean(k8s_cluster, namespace: str, what: str, bound: float = 30) -> float:
    t0 = time.monotonic()
    while True:
        left = _kubemagic_objects(k8s_cluster, namespace)
        if not any(left.values()):
            return time.monotonic() - t0
        assert time.monotonic() - t0 < bound, f"{what}: kubemagic objects left after {bound} s: {left}"
        time.sleep(0.25)


def test_kernel_restart_shutdown_and_sigkill_leave_nothing(hub, k8s_cluster):
    timings = {}
    with spawned(hub, k8s_cluster, "carol") as (carol, kernel):
        ns = carol.namespace
        run(kernel, "%load_ext kubemagic\n%kubemap start -n 2")
        assert _kubemagic_objects(k8s_cluster, ns)["jobs"]
        carol.server_api("POST", f"kernels/{kernel.kernel_id}/restart")
        timings["kernel restart"] = _wait_clean(k8s_cluster, ns, "kernel restart")

        kernel.ws.close()
        kernel = carol.kernel()
        run(kernel, "%load_ext kubemagic\n%kubemap start -n 2")
        assert _kubemagic_objects(k8s_cluster, ns)["jobs"]
        carol.server_api("DELETE", f"kernels/{kernel.kernel_id}")
        timings["kernel shutdown"] = _wait_clean(k8s_cluster, ns, "kernel shutdown")

        kernel = carol.kernel()
        run(kernel, "%load_ext kubemagic\n%kubemap start -n 2")
        assert _kubemagic_objects(k8s_cluster, ns)["jobs"]
        pid = int(run(kernel, "import os\nprint(os.getpid())"))
        pod = f"jupyter-{carol.name}"
        k8s_cluster.run_kubectl("exec", "-n", ns, pod, "--", "python", "-c",
                                f"import os; os.kill({pid}, 9)")
        timings["kernel SIGKILL"] = _wait_clean(k8s_cluster, ns, "SIGKILLed kernel")
        kernel.ws.close()
    print("\nkernel lifecycle, seconds to 0 kubemagic objects: "
          + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))


def test_admin_limit_and_quota_give_clear_messages(hub, k8s_cluster):
    with spawned(hub, k8s_cluster, "dave") as (dave, kernel):
        ns = dave.namespace
        run(kernel, "%load_ext kubemagic")
        # the admin's c.Kubemagic.max_engines (z2jh extraFiles, docs/manifests/z2jh-values.yaml)
        r = kernel.execute("%kubemap start -n 20", timeout=120)
        assert r["status"] == "error", r
        assert "at most 16" in r["error"] and "/etc/jupyter/kubemagic_config.py" in r["error"], r
        assert not any(_kubemagic_objects(k8s_cluster, ns).values())
        # the namespace's ResourceQuota (12 pods, the notebook's among them)
        t0 = time.monotonic()
        r = kernel.execute("%kubemap start -n 12", timeout=300)
        took = time.monotonic() - t0
        assert r["status"] == "error", r
        # (whichever of the quota's limits -- pods, limits.cpu -- the engines hit first)
        assert "exceeded quota: user-quota" in r["error"] and "limited: " in r["error"], r
        _wait_clean(k8s_cluster, ns, "refused start", bound=60)
        # the admin's default engine resources, and a map that fits works
        assert run(kernel, "%kubemap abs [-1, -2, -3] -n 2 --out ok\nprint(ok)").strip() == "[1, 2, 3]"
        cpu = k8s_cluster.run_kubectl(
            "get", "pods", "-n", ns, "-l", KUBEMAGIC_SELECTOR, "-o",
            "jsonpath={.items[*].spec.containers[0].resources.requests.cpu}").stdout.split()
        assert cpu and set(cpu) == {"100m"}, cpu
        idle = run(kernel, "import kubemagic\nprint(kubemagic.current().idle_timeout)")
        assert idle.strip() == "1800.0", idle  # the admin's c.Kubemagic.idle_timeout
    print(f"\nquota refusal reported after {took:.1f} s")


def test_doctor_passes_with_the_guide_and_names_the_policy_without_it(hub, k8s_cluster):
    with spawned(hub, k8s_cluster, "erin") as (erin, kernel):
        ns, pod = erin.namespace, f"jupyter-{erin.name}"

        def doctor() -> subprocess.CompletedProcess:
            return k8s_cluster.run_kubectl("exec", "-n", ns, pod, "--", "kubemagic", "doctor",
                                           check=False, timeout=300)

        ok = doctor()
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "FAIL" not in ok.stdout, ok.stdout
        # without the guide's ingress rule the network check fails, naming z2jh's policy
        from kubernetes import client

        net = client.NetworkingV1Api(k8s_cluster.api)
        net.delete_namespaced_network_policy("kubemagic-engines-to-controller", ns)
        policy = net.read_namespaced_network_policy("singleuser", ns)
        policy.spec.ingress = [r for r in policy.spec.ingress
                               if not any(p.port == 29100 for p in r.ports or [])]
        net.replace_namespaced_network_policy("singleuser", ns, policy)
        bad = doctor()
        assert bad.returncode != 0, bad.stdout
        line = next(x for x in bad.stdout.splitlines() if x.startswith("FAIL") and "pods reach" in x)
        assert "NetworkPolicy singleuser" in bad.stdout and "ingress" in bad.stdout, bad.stdout
        assert "docs/jupyterhub.md" in bad.stdout, bad.stdout
        print(f"\ndoctor without the guide's ingress rule:\n{line}")
