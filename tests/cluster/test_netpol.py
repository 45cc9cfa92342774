"""NetworkPolicies are enforced on the test cluster (kube-router's firewall, see README.md):
ingress and egress policies between pods take effect and go away again, pod->host traffic is
subject to the pod's egress policies, and host->pod traffic is always admitted (kube-router accepts
traffic whose source is an address of the node itself)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from kubernetes import client

from tests.cluster.fixture import STATE

pytestmark = pytest.mark.cluster

PORT = 8080
POLICY_WAIT_S = 20  # kube-router applies policies asynchronously (event-driven sync, usually < 1 s)
CONNECT_TIMEOUT_S = 1.5

SERVER = r"""
import socket
s = socket.create_server(("", %d))
while True:
    c, _ = s.accept()
    try:
        c.sendall(b"pong\n")
    finally:
        c.close()
""" % PORT

# one bounded connection attempt from inside the client pod; prints "ok" or "fail <reason>"
PROBE = r"""
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as s:
        s.settimeout(float(sys.argv[3]))
        print("ok" if s.recv(16).startswith(b"pong") else "fail no pong")
except OSError as e:
    print("fail", type(e).__name__, e)
"""


class HostServer:
    """TCP listener on the host's bridge address answering "pong" (the target of pod->host probes).
    Its port is above the NodePort range (30000-32767), which kube-router lets pods reach on the
    node's addresses whatever their egress policies say."""

    def __init__(self, host: str):
        for _ in range(50):
            self.sock = socket.create_server((host, 0))
            self.port = self.sock.getsockname()[1]
            if self.port > 32767:
                break
            self.sock.close()
        else:
            raise RuntimeError("no ephemeral port above the NodePort range")
        self.sock.settimeout(0.5)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            try:
                conn.sendall(b"pong\n")
            except OSError:
                pass
            finally:
                conn.close()

    def close(self):
        self.stopped.set()
        self.thread.join(timeout=5)
        self.sock.close()


def _pod(name: str, image: str, labels: dict, command: list[str]) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1PodSpec(
            restart_policy="Never",
            termination_grace_period_seconds=1,
            # node 1, whose own address is the host's: an extra node (tests/cluster/node) sees the
            # host as another machine, subject to the policies (tests/cluster/test_nodes.py)
            node_selector={"kubernetes.io/hostname": "kubemagic-node"},
            security_context=client.V1PodSecurityContext(run_as_user=1000, run_as_group=1000, run_as_non_root=True),
            containers=[client.V1Container(
                name="main", image=image, image_pull_policy="Never", command=command,
                resources=client.V1ResourceRequirements(requests={"cpu": "10m", "memory": "32Mi"}))]))


def _policy(name: str, selector: dict, ingress=None, egress=None) -> client.V1NetworkPolicy:
    types = (["Ingress"] if ingress is not None else []) + (["Egress"] if egress is not None else [])
    return client.V1NetworkPolicy(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1NetworkPolicySpec(
            pod_selector=client.V1LabelSelector(match_labels=selector),
            policy_types=types, ingress=ingress, egress=egress))


def _kube_router_log(lines: int = 40) -> str:
    f = STATE / "logs" / "kube-router.log"
    try:
        return "\n".join(f.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(no kube-router log: {e})"


def test_network_policies_are_enforced(k8s_cluster):
    core = client.CoreV1Api(k8s_cluster.api)
    net = client.NetworkingV1Api(k8s_cluster.api)
    ns = k8s_cluster.create_namespace("netpol")
    host = HostServer(k8s_cluster.host_ip)
    try:
        core.create_namespaced_pod(ns, _pod("server", k8s_cluster.image, {"app": "netpol-server"},
                                            ["python", "-c", SERVER]))
        core.create_namespaced_pod(ns, _pod("client", k8s_cluster.image, {"app": "netpol-client"},
                                            ["python", "-c", "import time; time.sleep(3600)"]))
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            pods = {p.metadata.name: p for p in core.list_namespaced_pod(ns).items}
            if all(p.status.phase == "Running" and p.status.pod_ip for p in pods.values()) and len(pods) == 2:
                break
            assert not any(p.status.phase in ("Failed", "Succeeded") for p in pods.values()), \
                [(n, p.status.phase) for n, p in pods.items()]
            time.sleep(0.3)
        else:
            pytest.fail(f"pods not running: {[(n, p.status.phase) for n, p in pods.items()]}")
        server_ip = pods["server"].status.pod_ip

        def client_probe(ip: str, port: int) -> str:
            r = k8s_cluster.run_kubectl("exec", "-n", ns, "client", "--", "python", "-c", PROBE,
                                        ip, str(port), str(CONNECT_TIMEOUT_S), check=False, timeout=60)
            assert r.returncode == 0 and r.stdout.strip(), f"kubectl exec failed: {r.stdout}\n{r.stderr}"
            return r.stdout.strip()

        def host_probe(ip: str, port: int) -> str:
            try:
                with socket.create_connection((ip, port), timeout=CONNECT_TIMEOUT_S) as s:
                    s.settimeout(CONNECT_TIMEOUT_S)
                    return "ok" if s.recv(16).startswith(b"pong") else "fail no pong"
            except OSError as e:
                return f"fail {type(e).__name__} {e}"

        checks = {
            "client pod -> server pod": lambda: client_probe(server_ip, PORT),
            "client pod -> host": lambda: client_probe(k8s_cluster.host_ip, host.port),
            "host -> server pod": lambda: host_probe(server_ip, PORT),
        }

        def expect(step: str, want: dict, wait_s: float = POLICY_WAIT_S):
            """Polls until every named check gives the wanted outcome (True: connects), bounded."""
            t0 = time.monotonic()
            deadline = t0 + wait_s
            while True:
                got = {name: checks[name]() for name in want}
                if all(got[n].startswith("ok") == w for n, w in want.items()):
                    print(f"{step}: {got} after {time.monotonic() - t0:.1f} s")
                    return
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"{step}: wanted {want} (True = connects), got {got} for {wait_s:.0f} s\n"
                        f"policies: {[p.metadata.name for p in net.list_namespaced_network_policy(ns).items]}\n"
                        f"===== kube-router log (tail) =====\n{_kube_router_log()}", pytrace=False)
                time.sleep(0.3)

        # no policy: everything connects (the server may still be starting: give it longer)
        expect("no policy", {"client pod -> server pod": True, "client pod -> host": True,
                             "host -> server pod": True}, wait_s=60)

        # ingress: deny all to the server
        net.create_namespaced_network_policy(ns, _policy("deny-ingress", {"app": "netpol-server"}, ingress=[]))
        expect("deny-ingress", {"client pod -> server pod": False})
        # the node's own addresses are always admitted (kube-router's "traffic to pods when source is
        # the pod's local node" ACCEPT rule): no ipBlock for 10.88.0.1 is needed, nor can one block it
        expect("deny-ingress, from the host", {"host -> server pod": True}, wait_s=0)

        # ingress: admit the client by label
        net.create_namespaced_network_policy(ns, _policy(
            "allow-client", {"app": "netpol-server"},
            ingress=[client.V1NetworkPolicyIngressRule(
                _from=[client.V1NetworkPolicyPeer(
                    pod_selector=client.V1LabelSelector(match_labels={"app": "netpol-client"}))],
                ports=[client.V1NetworkPolicyPort(protocol="TCP", port=PORT)])]))
        expect("deny-ingress + allow-client", {"client pod -> server pod": True})

        net.delete_namespaced_network_policy("allow-client", ns)
        expect("deny-ingress again", {"client pod -> server pod": False})
        net.delete_namespaced_network_policy("deny-ingress", ns)
        expect("policies deleted", {"client pod -> server pod": True})

        # egress: the client may reach only the host -> the server pod is cut off
        net.create_namespaced_network_policy(ns, _policy(
            "egress-host-only", {"app": "netpol-client"},
            egress=[client.V1NetworkPolicyEgressRule(
                to=[client.V1NetworkPolicyPeer(ip_block=client.V1IPBlock(cidr=f"{k8s_cluster.host_ip}/32"))])]))
        expect("egress to the host only", {"client pod -> server pod": False, "client pod -> host": True})

        # egress: the client may reach only the server pod -> pod->host traffic is cut off too
        net.replace_namespaced_network_policy("egress-host-only", ns, _policy(
            "egress-host-only", {"app": "netpol-client"},
            egress=[client.V1NetworkPolicyEgressRule(
                to=[client.V1NetworkPolicyPeer(ip_block=client.V1IPBlock(cidr=f"{server_ip}/32"))])]))
        expect("egress to the server pod only", {"client pod -> server pod": True, "client pod -> host": False})

        net.delete_namespaced_network_policy("egress-host-only", ns)
        expect("egress policy deleted", {"client pod -> server pod": True, "client pod -> host": True})
    finally:
        host.close()
        try:
            core.delete_namespace(ns, body=client.V1DeleteOptions(propagation_policy="Background",
                                                                   grace_period_seconds=0))
            k8s_cluster._namespaces.remove(ns)  # deleted already, not again at session end
        except client.ApiException as e:
            print(f"could not delete namespace {ns}: {e}")
