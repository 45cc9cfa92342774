"""A second node, node loss and control-plane restarts on the real test cluster
(tests/cluster/node, tests/cluster/restart, README.md "More nodes").

The second node is a real kubelet + containerd + kube-router in its own network namespace: pods on
it reach the host and pods on node 1, NetworkPolicies are enforced there by its own kube-router,
`node stop` makes it vanish (NotReady within seconds, its pods unreachable) and `node start`
brings it back. Control-plane components SIGKILLed and restarted leave a cluster that still runs
Jobs. Numbers (seconds) are printed: run with -s to see them."""

from __future__ import annotations

import ipaddress
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from kubernetes import client

from tests.cluster.fixture import STATE
from tests.cluster.nodes import (
    HARNESS,
    ClusterScriptError,
    add_node,
    remove_node,
    restart,
    start_node,
    stop_node,
)

pytestmark = pytest.mark.cluster

NODE1 = "kubemagic-node"
PORT = 8080
NOT_READY_BOUND_S = 30  # grace period 10 s + monitor period 2 s + lease interval 2 s, with slack
SERVER = f"""
import socket
s = socket.create_server(("", {PORT}))
while True:
    c, _ = s.accept()
    try:
        c.sendall(b"pong\\n")
    finally:
        c.close()
"""
# from a pod: a line to the host's listener, then "pong" from a pod on the other node
CLIENT = f"""
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20) as s:
    s.sendall(b"hello from node 2\\n")
with socket.create_connection((sys.argv[3], {PORT}), timeout=20) as s:
    print("peer says", s.recv(16).decode().strip())
"""
PROBE = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5) as s:
        s.settimeout(1.5)
        print("ok" if s.recv(16).startswith(b"pong") else "fail no pong")
except OSError as e:
    print("fail", type(e).__name__, e)
"""


def _pod(name: str, image: str, node: str | None, command: list[str], labels: dict | None = None,
         restart_policy: str = "Never") -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels or {}),
        spec=client.V1PodSpec(
            node_name=node, restart_policy=restart_policy, termination_grace_period_seconds=0,
            security_context=client.V1PodSecurityContext(run_as_user=1000, run_as_group=1000, run_as_non_root=True),
            containers=[client.V1Container(
                name="main", image=image, image_pull_policy="Never", command=command,
                resources=client.V1ResourceRequirements(requests={"cpu": "10m", "memory": "32Mi"}))]))


def _wait_pods(core, ns: str, names: list[str], phase: str = "Running", timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        pods = {p.metadata.name: p for p in core.list_namespaced_pod(ns).items if p.metadata.name in names}
        if len(pods) == len(names) and all(p.status.phase == phase and p.status.pod_ip for p in pods.values()):
            return pods
        bad = {n: p.status.phase for n, p in pods.items() if p.status.phase == "Failed"}
        if bad or time.monotonic() > deadline:
            logs = {n: _log(core, ns, n) for n in pods}
            pytest.fail(f"pods {names} not {phase}: {[(n, p.status.phase) for n, p in pods.items()]}\n{logs}",
                        pytrace=False)
        time.sleep(0.3)


def _log(core, ns: str, name: str) -> str:
    try:
        return core.read_namespaced_pod_log(name, ns)
    except client.ApiException as e:
        return f"(no log: {e.reason})"


def _host_probe(ip: str, port: int = PORT) -> str:
    try:
        with socket.create_connection((ip, port), timeout=1.5) as s:
            s.settimeout(1.5)
            return "ok" if s.recv(16).startswith(b"pong") else "fail no pong"
    except OSError as e:
        return f"fail {type(e).__name__} {e}"


def _ready(core, node: str) -> client.V1NodeCondition:
    return next(c for c in core.read_node(node).status.conditions if c.type == "Ready")


def _until(what: str, check, timeout: float) -> float:
    """Polls check() until it is true; returns the seconds it took, fails after timeout."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"{what}: not within {timeout:.0f} s", pytrace=False)
        time.sleep(0.25)
    return time.monotonic() - t0


class _Listener:
    """TCP listener on the host's bridge address; records (peer address, first line) of each
    connection."""

    def __init__(self, host: str):
        self.sock = socket.create_server((host, 0))
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.got: list[tuple[str, bytes]] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopped.is_set():
            try:
                conn, peer = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    self.got.append((peer[0], conn.recv(64)))
                except OSError:
                    pass

    def close(self):
        self.stopped.set()
        self.thread.join(timeout=5)
        self.sock.close()


def test_second_node_is_ready(k8s_cluster, second_node):
    core = client.CoreV1Api(k8s_cluster.api)
    node = core.read_node(second_node.name)
    assert _ready(core, second_node.name).status == "True"
    assert {a.type: a.address for a in node.status.addresses}["InternalIP"] == second_node.node_ip
    assert ipaddress.ip_address(second_node.node_ip) in ipaddress.ip_network("10.88.255.0/24")
    assert ipaddress.ip_network(second_node.pod_cidr).subnet_of(ipaddress.ip_network("10.89.0.0/16"))
    listing = subprocess.run(["bash", str(HARNESS / "node"), "list"], capture_output=True, text=True, check=True).stdout
    assert re.search(rf"^{second_node.name}\s+{re.escape(second_node.node_ip)}\s.*\srunning\s+True$", listing, re.MULTILINE), listing
    assert re.search(rf"^{NODE1}\s+10\.88\.0\.1\s.*\srunning\s+True$", listing, re.MULTILINE), listing


def test_pod_on_second_node_reaches_host_and_node1_pod(k8s_cluster, second_node):
    core = client.CoreV1Api(k8s_cluster.api)
    ns = k8s_cluster.create_namespace("node2-net")
    listener = _Listener(k8s_cluster.host_ip)
    try:
        core.create_namespaced_pod(ns, _pod("server", k8s_cluster.image, NODE1, ["python", "-c", SERVER]))
        server_ip = _wait_pods(core, ns, ["server"])["server"].status.pod_ip
        core.create_namespaced_pod(ns, _pod("client", k8s_cluster.image, second_node.name, [
            "python", "-c", CLIENT, k8s_cluster.host_ip, str(listener.port), server_ip]))
        pod = _wait_pods(core, ns, ["client"], phase="Succeeded")["client"]
        client_ip = pod.status.pod_ip
        assert ipaddress.ip_address(client_ip) in ipaddress.ip_network(second_node.pod_cidr), client_ip
        # the log comes through the apiserver from the second node's kubelet
        assert "peer says pong" in _log(core, ns, "client")
        _until("the host's listener saw the client", lambda: listener.got, 5)
        # from the pod's own address: routed, not masqueraded
        assert listener.got[0] == (client_ip, b"hello from node 2\n"), listener.got
    finally:
        listener.close()


def test_network_policy_is_enforced_on_second_node(k8s_cluster, second_node):
    core = client.CoreV1Api(k8s_cluster.api)
    net = client.NetworkingV1Api(k8s_cluster.api)
    ns = k8s_cluster.create_namespace("node2-netpol")
    core.create_namespaced_pod(ns, _pod("server", k8s_cluster.image, second_node.name,
                                        ["python", "-c", SERVER], labels={"app": "server"}))
    core.create_namespaced_pod(ns, _pod("client", k8s_cluster.image, NODE1,
                                        ["python", "-c", "import time; time.sleep(3600)"]))
    server_ip = _wait_pods(core, ns, ["server", "client"])["server"].status.pod_ip

    def from_node1_pod() -> str:
        r = k8s_cluster.run_kubectl("exec", "-n", ns, "client", "--", "python", "-c", PROBE, server_ip,
                                    str(PORT), check=False, timeout=60)
        assert r.returncode == 0 and r.stdout.strip(), f"kubectl exec failed: {r.stdout}\n{r.stderr}"
        return r.stdout.strip()

    def connects(want: bool):
        got = {}

        def check():
            got.update({"host": _host_probe(server_ip), "node-1 pod": from_node1_pod()})
            return all(v.startswith("ok") == want for v in got.values())
        return check, got

    check, got = connects(True)
    print(f"server on {second_node.name} reachable after {_until(f'reachable: {got}', check, 60):.1f} s")
    net.create_namespaced_network_policy(ns, client.V1NetworkPolicy(
        metadata=client.V1ObjectMeta(name="deny-ingress"),
        spec=client.V1NetworkPolicySpec(pod_selector=client.V1LabelSelector(match_labels={"app": "server"}),
                                        policy_types=["Ingress"], ingress=[])))
    # the host is another machine for the second node: unlike on node 1, the policy keeps it out
    check, got = connects(False)
    print(f"deny-ingress took effect after {_until(f'blocked: {got}', check, 20):.1f} s: {got}")
    net.delete_namespaced_network_policy("deny-ingress", ns)
    check, got = connects(True)
    print(f"reachable again {_until(f'reachable again: {got}', check, 20):.1f} s after deleting the policy")


def test_node_stop_and_start(k8s_cluster, second_node):
    core = client.CoreV1Api(k8s_cluster.api)
    ns = k8s_cluster.create_namespace("node2-loss")
    core.create_namespaced_pod(ns, _pod("server", k8s_cluster.image, second_node.name,
                                        ["python", "-c", SERVER], restart_policy="Always"))
    ip = _wait_pods(core, ns, ["server"])["server"].status.pod_ip
    _until(f"the server pod {ip} answers", lambda: _host_probe(ip) == "ok", 60)

    t0 = time.monotonic()
    out = stop_node(second_node.name)
    stopped = time.monotonic()
    probes = [_host_probe(ip) for _ in range(3)]
    assert not any(p.startswith("ok") for p in probes), f"pod {ip} still answers after node stop: {probes}\n{out}"
    not_ready = _until(f"{second_node.name} NotReady", lambda: _ready(core, second_node.name).status != "True", 120)
    cond = _ready(core, second_node.name)
    print(f"node stop took {stopped - t0:.1f} s; NotReady ({cond.status}, {cond.reason}) "
          f"{not_ready:.1f} s after it; {out.strip().splitlines()[-1]}")
    assert cond.status == "Unknown" and cond.reason == "NodeStatusUnknown", cond
    assert not_ready <= NOT_READY_BOUND_S, \
        f"NotReady only after {not_ready:.1f} s: is --node-monitor-grace-period=10s in effect?"
    taints = {t.key for t in core.read_node(second_node.name).spec.taints or []}
    assert "node.kubernetes.io/unreachable" in taints, taints

    t1 = time.monotonic()
    start_node(second_node.name)
    assert _ready(core, second_node.name).status == "True"
    ready = time.monotonic() - t1

    def server_back():  # restarted in a new sandbox, maybe with a new address
        pod = core.read_namespaced_pod("server", ns)
        return pod.status.phase == "Running" and pod.status.pod_ip and _host_probe(pod.status.pod_ip) == "ok"
    back = _until("the server pod answers again after node start", server_back, 120)
    print(f"node start: Ready after {ready:.1f} s, the pod answers {back:.1f} s later")


@pytest.mark.parametrize("component", ["apiserver", "etcd", "controller-manager", "scheduler", "kubelet", "containerd"])
def test_restart_leaves_a_healthy_cluster(k8s_cluster, component):
    out = restart(component)
    outage = re.search(r"^outage: ([0-9.]+) s$", out, re.MULTILINE)
    assert outage, out
    print(f"restart {component}: {out.strip().splitlines()[-2]}")
    ns = k8s_cluster.create_namespace(f"restart-{component}")
    # a Job: the apiserver stores it, the job controller makes its pod, the scheduler places it,
    # the kubelet and containerd run it
    template = _pod("job", k8s_cluster.image, None, ["python", "-c", "print('done')"]).spec
    template.node_selector = {"kubernetes.io/hostname": NODE1}
    client.BatchV1Api(k8s_cluster.api).create_namespaced_job(ns, client.V1Job(
        metadata=client.V1ObjectMeta(name="after-restart"),
        spec=client.V1JobSpec(backoff_limit=0, template=client.V1PodTemplateSpec(spec=template))))
    batch = client.BatchV1Api(k8s_cluster.api)
    took = _until(f"Job after restarting {component} completes",
                  lambda: (batch.read_namespaced_job("after-restart", ns).status.succeeded or 0) == 1, 180)
    print(f"restart {component}: outage {outage.group(1)} s, then a Job completed in {took:.1f} s")


def test_bad_input_gets_one_clear_error(k8s_cluster):
    for call, expected in [(lambda: add_node("Bad_Name"), "not a valid node name"),
                           (lambda: stop_node("kubemagic-node99"), "there is no extra node kubemagic-node99"),
                           (lambda: restart("etcdx"), "unknown component 'etcdx'")]:
        with pytest.raises(ClusterScriptError) as e:
            call()
        assert expected in str(e.value) and "fix:" in str(e.value), str(e.value)


def test_remove_leaves_nothing_behind(k8s_cluster, second_node):
    """A third node of its own (the shared second node stays for other tests and sessions): added
    next to the second with the next address, then removed without a trace."""
    core = client.CoreV1Api(k8s_cluster.api)
    try:
        third = add_node("kubemagic-node-rm")
        assert third.node_ip != second_node.node_ip and third.pod_cidr != second_node.pod_cidr, (third, second_node)
        assert _ready(core, third.name).status == "True"
        node_dir = STATE / "nodes" / third.name
        index = (node_dir / "index").read_text().strip()
    finally:
        remove_node("kubemagic-node-rm")
    with pytest.raises(client.ApiException) as e:
        core.read_node(third.name)
    assert e.value.status == 404

    def run(*cmd: str) -> str:
        return subprocess.run(cmd, check=False, capture_output=True, text=True).stdout

    assert third.netns not in run("ip", "netns", "list").split()
    assert run("ip", "route", "show", third.pod_cidr).strip() == ""
    assert run("ip", "link", "show", f"kmnode{index}").strip() == ""
    assert not node_dir.exists()
    assert not list(Path("/sys/fs/cgroup").glob(f"*/kubemagic-nodes/{third.name}"))
    assert str(node_dir) not in run("findmnt", "-rn", "-o", "TARGET")
    assert run("pgrep", "-af", f"nodes/{third.name}/").strip() == ""
    assert not list((STATE / "logs").glob(f"{third.name}.*")), "its logs are left"
    # the other extra node is untouched: Ready, or Ready again soon (with the node-loss grace of
    # 10 s, a 2-core machine busy starting and removing a node can delay its status for a moment;
    # a node that removal broke would stay Unknown)
    cond = _ready(core, second_node.name)
    if cond.status != "True":
        took = _until(f"{second_node.name} Ready again after removing {third.name}",
                      lambda: _ready(core, second_node.name).status == "True", 60)
        print(f"{second_node.name} was {cond.status} ({cond.reason}) after the removal, Ready again "
              f"{took:.1f} s later")
