"""Smoke test of the real test cluster: a Job runs the engine image, its pods reach the host over
the bridge, a patch scales it (elastic Indexed Job), foreground deletion removes Job and pods."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from kubernetes import client

pytestmark = pytest.mark.cluster

POD_SCRIPT = r"""
import os, socket, sys
import kubemagic, ipyparallel, zmq
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
msg = "hello index=%s uid=%d pod=%s ipyparallel=%s zmq=%s\n" % (
    os.environ.get("JOB_COMPLETION_INDEX"), os.getuid(), socket.gethostname(),
    ipyparallel.__version__, zmq.zmq_version())
s.sendall(msg.encode())
s.settimeout(600)
s.recv(100)  # hold the pod until the test says goodbye or deletes it
"""


class LineServer:
    """TCP server on the host's bridge address; records the first line of each connection and
    keeps the connection open (the pod waits on it). Bounded: stops with close()."""

    def __init__(self, host: str):
        self.sock = socket.create_server((host, 0))
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self.conns: list[socket.socket] = []
        self.cond = threading.Condition()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket):
        conn.settimeout(60)
        buf = b""
        try:
            while b"\n" not in buf:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                buf += chunk
        except OSError:
            pass
        with self.cond:
            self.conns.append(conn)
            if buf:
                self.lines.append(buf.decode(errors="replace").strip())
            self.cond.notify_all()

    def wait_lines(self, n: int, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.lines) < n and time.monotonic() < deadline:
                self.cond.wait(timeout=1)
            return list(self.lines)

    def close(self):
        self.stopped.set()
        self.thread.join(timeout=5)
        self.sock.close()
        with self.cond:
            for c in self.conns:
                try:
                    c.close()
                except OSError:
                    pass


def _job(name: str, image: str, host: str, port: int) -> client.V1Job:
    return client.V1Job(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1JobSpec(
            completion_mode="Indexed",
            completions=2,
            parallelism=2,
            backoff_limit=0,
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": "kubemagic-smoke"}),
                spec=client.V1PodSpec(
                    restart_policy="Never",
                    termination_grace_period_seconds=1,
                    security_context=client.V1PodSecurityContext(
                        run_as_user=1000, run_as_group=1000, run_as_non_root=True),
                    containers=[client.V1Container(
                        name="engine",
                        image=image,
                        image_pull_policy="Never",
                        command=["python", "-c", POD_SCRIPT, host, str(port)],
                        resources=client.V1ResourceRequirements(requests={"cpu": "10m", "memory": "32Mi"}),
                    )],
                ),
            ),
        ),
    )


def _pod_diagnostics(core: client.CoreV1Api, ns: str) -> str:
    out = []
    for p in core.list_namespaced_pod(ns).items:
        out.append(f"pod {p.metadata.name}: phase={p.status.phase} "
                   f"conditions={[(c.type, c.status, c.reason) for c in (p.status.conditions or [])]} "
                   f"containers={[(s.name, s.state) for s in (p.status.container_statuses or [])]}")
        try:
            out.append(core.read_namespaced_pod_log(p.metadata.name, ns, tail_lines=30))
        except client.ApiException as e:
            out.append(f"(no log: {e.reason})")
    for e in core.list_namespaced_event(ns).items:
        out.append(f"event {e.involved_object.kind}/{e.involved_object.name}: {e.reason}: {e.message}")
    return "\n".join(out)


def test_job_runs_engine_image_scales_and_is_deleted(k8s_cluster):
    core = client.CoreV1Api(k8s_cluster.api)
    batch = client.BatchV1Api(k8s_cluster.api)
    ns = k8s_cluster.create_namespace("smoke")
    server = LineServer(k8s_cluster.host_ip)
    try:
        t0 = time.monotonic()
        batch.create_namespaced_job(ns, _job("smoke", k8s_cluster.image, k8s_cluster.host_ip, server.port))

        lines = server.wait_lines(2, timeout=300)
        print(f"2 pods delivered {time.monotonic() - t0:.2f} s after the Job was created")
        assert len(lines) >= 2, f"pods delivered {lines}\n{_pod_diagnostics(core, ns)}"
        assert {ln.split()[1] for ln in lines} == {"index=0", "index=1"}, lines
        for ln in lines:
            assert ln.startswith("hello ") and " uid=1000 " in ln, ln  # ran as non-root uid 1000

        # elastic Indexed Job: scale 2 -> 3 by patching parallelism and completions together
        t0 = time.monotonic()
        batch.patch_namespaced_job("smoke", ns, {"spec": {"parallelism": 3, "completions": 3}})
        lines = server.wait_lines(3, timeout=300)
        print(f"3rd pod delivered {time.monotonic() - t0:.2f} s after the scaling patch")
        assert len(lines) >= 3, f"third pod did not deliver: {lines}\n{_pod_diagnostics(core, ns)}"
        assert "index=2" in lines[2], lines

        pods = core.list_namespaced_pod(ns, label_selector="job-name=smoke").items
        assert len(pods) == 3, [p.metadata.name for p in pods]
        for p in pods:  # pods are owned by the Job (garbage collection relies on this)
            assert [o.kind for o in p.metadata.owner_references] == ["Job"]

        # foreground deletion: the Job goes only after its pods are gone
        t0 = time.monotonic()
        batch.delete_namespaced_job("smoke", ns, body=client.V1DeleteOptions(propagation_policy="Foreground"))
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            jobs = batch.list_namespaced_job(ns).items
            pods = core.list_namespaced_pod(ns, label_selector="job-name=smoke").items
            if not jobs and not pods:
                print(f"Job and pods gone {time.monotonic() - t0:.2f} s after the foreground delete")
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"Job/pods still there after foreground delete: jobs={[j.metadata.name for j in jobs]} "
                        f"pods={[p.metadata.name for p in pods]}\n{_pod_diagnostics(core, ns)}")
    finally:
        server.close()


def test_service_account_kubeconfig_is_least_privilege(k8s_cluster):
    from kubernetes import config

    ns = k8s_cluster.create_namespace("sa")
    path = k8s_cluster.service_account_kubeconfig(ns, "tester")
    api = config.new_client_from_config(config_file=path)
    try:
        core = client.CoreV1Api(api)
        with pytest.raises(client.ApiException) as e:
            core.list_namespaced_pod(ns)
        assert e.value.status == 403
        # grant it pod listing in its namespace only
        rbac = client.RbacAuthorizationV1Api(k8s_cluster.api)
        rbac.create_namespaced_role(ns, client.V1Role(
            metadata=client.V1ObjectMeta(name="pods"),
            rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["list"])]))
        rbac.create_namespaced_role_binding(ns, client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="pods"),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="pods"),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="tester", namespace=ns)]))
        deadline = time.monotonic() + 30
        while True:
            try:
                core.list_namespaced_pod(ns)
                break
            except client.ApiException as err:
                if err.status != 403 or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        with pytest.raises(client.ApiException) as e:
            core.list_namespaced_pod("default")
        assert e.value.status == 403
    finally:
        api.close()


IN_CLUSTER_SCRIPT = r"""
from kubernetes import client, config
config.load_incluster_config()
print("version", client.VersionApi().get_code().git_version)
try:
    client.CoreV1Api().list_namespaced_pod("kube-system")
    print("list kube-system: allowed")
except client.ApiException as e:
    print("list kube-system:", e.status)
"""


def test_pod_reaches_apiserver_in_cluster_as_its_service_account(k8s_cluster):
    """The `kubernetes` Service IP (no kube-proxy: one DNAT rule) and projected SA tokens work."""
    core = client.CoreV1Api(k8s_cluster.api)
    ns = k8s_cluster.create_namespace("incluster")
    core.create_namespaced_pod(ns, client.V1Pod(
        metadata=client.V1ObjectMeta(name="probe"),
        spec=client.V1PodSpec(
            restart_policy="Never",
            security_context=client.V1PodSecurityContext(run_as_user=1000, run_as_group=1000),
            containers=[client.V1Container(name="probe", image=k8s_cluster.image, image_pull_policy="Never",
                                           command=["python", "-c", IN_CLUSTER_SCRIPT])])))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        phase = core.read_namespaced_pod("probe", ns).status.phase
        if phase in ("Succeeded", "Failed"):
            break
        time.sleep(0.5)
    log = core.read_namespaced_pod_log("probe", ns)
    assert phase == "Succeeded", f"{phase}\n{log}\n{_pod_diagnostics(core, ns)}"
    assert "version v1." in log, log
    assert "list kube-system: 403" in log, log  # authenticated as the namespace's default SA, no rights
