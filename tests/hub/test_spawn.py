"""A user's server spawned by the real JupyterHub + KubeSpawner runs %%kubemap on Kubernetes.

Spawn a fresh user's server through the hub's REST API; the pod runs in the user's namespace
jhub-USER as service account kubemagic; a %%kubemap cell with no Kubernetes options, run in a
kernel of that server (over the kernel websocket, through the proxy, as JupyterLab does), returns
correct results computed by engine pods of a Job in jhub-USER running the notebook's own image;
the enforced NetworkPolicies let the notebook reach the hub API and the API server but not the
kubelet, and the engines none of them;
stopping the server through the REST API leaves no kubemagic Job, pod or Secret within 30 s.
"""

from __future__ import annotations

import json
import time

import pytest

pytestmark = pytest.mark.cluster

ENGINE_SELECTOR = "app.kubernetes.io/name=kubemagic,app.kubernetes.io/component=engine"
KUBEMAGIC_SELECTOR = "app.kubernetes.io/name=kubemagic"
SINGLEUSER_IMAGE = "kubemagic-singleuser:dev"


def _kubemagic_objects(k8s_cluster, namespace: str) -> dict[str, list[str]]:
    from kubernetes import client

    batch, core = client.BatchV1Api(k8s_cluster.api), client.CoreV1Api(k8s_cluster.api)
    return {
        "jobs": [j.metadata.name for j in batch.list_namespaced_job(namespace, label_selector=KUBEMAGIC_SELECTOR).items],
        "pods": [p.metadata.name for p in core.list_namespaced_pod(namespace, label_selector=KUBEMAGIC_SELECTOR).items],
        "secrets": [s.metadata.name for s in core.list_namespaced_secret(namespace, label_selector=KUBEMAGIC_SELECTOR).items],
    }


def targets_desc(reach: list[str]) -> str:
    return ", ".join(f"{t}: {r}" for t, r in zip(("hub API 8081", "API server 6443", "kubelet 10250"), reach))


def test_spawned_server_maps_on_kubernetes_and_cleans_up(hub, hub_user, k8s_cluster):
    from kubernetes import client

    core, batch = client.CoreV1Api(k8s_cluster.api), client.BatchV1Api(k8s_cluster.api)
    ns = hub_user.namespace
    assert ns == f"jhub-{hub_user.name}"

    # the server's pod: in the user's namespace, as service account kubemagic, token mounted
    pods = core.list_namespaced_pod(ns, label_selector=f"component=singleuser-server,hub.jupyter.org/username={hub_user.name}").items
    assert len(pods) == 1, [p.metadata.name for p in pods]
    pod = pods[0]
    assert pod.status.phase == "Running"
    assert pod.spec.service_account_name == "kubemagic"
    assert pod.spec.automount_service_account_token is True
    assert pod.spec.containers[0].image == SINGLEUSER_IMAGE
    env = {e.name for e in pod.spec.containers[0].env}
    assert {"KUBEMAGIC_POD_IP", "KUBEMAGIC_POD_UID", "KUBEMAGIC_POD_NAME", "KUBEMAGIC_POD_NAMESPACE",
            "JUPYTER_IMAGE_SPEC"} <= env
    policies = {p.metadata.name for p in client.NetworkingV1Api(k8s_cluster.api).list_namespaced_network_policy(ns).items}
    assert {"singleuser", "kubemagic-engines", "kubemagic-engines-to-controller"} <= policies

    # a %%kubemap cell with no Kubernetes options, in a kernel of the spawned server
    kernel = hub_user.kernel()
    try:
        r = kernel.execute("%load_ext kubemagic\nxs = list(range(40))", timeout=120)
        assert r["status"] == "ok", r
        t0 = time.monotonic()
        r = kernel.execute(
            "%%kubemap square xs --out res\n"
            "import os, socket\n"
            "def square(x):\n"
            "    return x * x, socket.gethostname(), os.environ.get('KUBEMAGIC_POD_NAME', '')\n",
            timeout=300)
        first_cell = time.monotonic() - t0
        assert r["status"] == "ok", f"{r}\npod log:\n" + core.read_namespaced_pod_log(pod.metadata.name, ns)[-5000:]
        r = kernel.execute("import json; print(json.dumps(res))", timeout=60)
        assert r["status"] == "ok", r
        results = json.loads(r["stdout"])
        assert [v for v, _, _ in results] == [x * x for x in range(40)]
        # engine pods are named by the downward API (KUBEMAGIC_POD_NAME) and have "<job>-<index>"
        # hostnames; the notebook pod's hostname is its name
        ran_on = {name for _, _, name in results}
        assert pod.metadata.name not in {h for _, h, _ in results}, "items ran in the notebook pod"

        # they ran on engine pods of one Job in the user's namespace, running the notebook's image
        jobs = batch.list_namespaced_job(ns, label_selector=ENGINE_SELECTOR).items
        assert len(jobs) == 1, [j.metadata.name for j in jobs]
        job = jobs[0]
        assert job.spec.template.spec.containers[0].image == SINGLEUSER_IMAGE
        assert [o.name for o in job.metadata.owner_references or []] == [pod.metadata.name]
        engine_pods = {p.metadata.name for p in core.list_namespaced_pod(ns, label_selector=ENGINE_SELECTOR).items}
        assert ran_on and ran_on <= engine_pods, (ran_on, engine_pods)
        assert _kubemagic_objects(k8s_cluster, ns)["secrets"], "no engine Secret while the session runs"

        # the NetworkPolicies (enforced by the cluster): the notebook reaches the hub API and the
        # API server but not the kubelet; engines reach none of them (only their controller)
        r = kernel.execute(
            "def probe(target):\n"
            "    import socket\n"
            "    try:\n"
            "        socket.create_connection(tuple(target), timeout=3).close()\n"
            "        return 'open'\n"
            "    except Exception as e:\n"
            "        return type(e).__name__\n"
            f"targets = [('{k8s_cluster.host_ip}', 8081), ('{k8s_cluster.host_ip}', 6443), ('{k8s_cluster.host_ip}', 10250)]\n"
            "print(json.dumps([probe(t) for t in targets]))", timeout=60)
        assert r["status"] == "ok", r
        assert json.loads(r["stdout"])[:2] == ["open", "open"], r["stdout"]
        notebook_kubelet = json.loads(r["stdout"])[2]
        r = kernel.execute("%%kubemap probe targets --out reach\nimport socket\n", timeout=120)
        assert r["status"] == "ok", r
        r = kernel.execute("print(json.dumps(reach))", timeout=60)
        engine_reach = json.loads(r["stdout"])
        refused = {"ConnectionRefusedError", "TimeoutError", "timeout"}  # REJECT or DROP
        assert set(engine_reach) <= refused, f"engine pods: {targets_desc(engine_reach)}"
        assert notebook_kubelet in refused, f"the notebook pod and the kubelet (10250): {notebook_kubelet}"
        print(f"\nnetwork: engine pods -> {targets_desc(engine_reach)}; notebook -> kubelet: {notebook_kubelet}")
    finally:
        kernel.ws.close()

    # stop the server through the REST API: kubemagic's Job, pods and Secret go with the pod
    t0 = time.monotonic()
    hub.api("DELETE", f"users/{hub_user.name}/server", ok=(202, 204))
    left = _kubemagic_objects(k8s_cluster, ns)
    while any(left.values()) and time.monotonic() - t0 < 30:
        time.sleep(0.25)
        left = _kubemagic_objects(k8s_cluster, ns)
    cleaned = time.monotonic() - t0
    assert not any(left.values()), f"kubemagic objects left {cleaned:.0f} s after the server stopped: {left}"

    hub.timings.update({"hub up (this session)": hub.up_seconds, "first %%kubemap cell": first_cell,
                        "server stop to 0 kubemagic objects": cleaned})
    print("\ntimings: " + ", ".join(f"{k} {v:.1f} s" for k, v in hub.timings.items()))


def test_login_with_the_test_password(hub):
    """The hub's login form takes any user name with HUB_PASSWORD, and nothing else."""
    import requests

    def login(name: str, password: str) -> requests.Response:
        s = requests.Session()
        s.get(f"{hub.url}/hub/login", timeout=30).raise_for_status()  # sets the _xsrf cookie
        return s.post(f"{hub.url}/hub/login", timeout=30, allow_redirects=False,
                      data={"username": name, "password": password, "_xsrf": s.cookies.get("_xsrf", "")})

    name = f"kmtlogin{time.monotonic_ns() % 10**8}"
    try:
        ok = login(name, hub.password)
        assert ok.status_code == 302, (ok.status_code, ok.text[:500])
        assert hub.user_model(name)["name"] == name  # the login made the user
        bad = login(name + "x", hub.password + "x")
        assert bad.status_code == 403, bad.status_code
    finally:
        hub.api("DELETE", f"users/{name}", ok=(204, 404))
