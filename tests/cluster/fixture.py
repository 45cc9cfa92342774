"""pytest plugin: the real single-node Kubernetes of tests/cluster/up as a session fixture.

Loaded by tests/conftest.py (``pytest_plugins = ["tests.cluster.fixture"]``).

* ``k8s_cluster`` (session scope) ensures the cluster is up and returns a :class:`Cluster`.
  When the session has tests that use it, ``tests/cluster/up`` runs once before the first test
  (outside any per-test timeout; its output is shown live). It returns in seconds when the
  cluster is already healthy and rebuilds the engine image when ``kubemagic/`` changed. If the
  cluster cannot come up, every test that needs it fails with the harness logs: it never skips.
* ``second_node`` (module scope) adds the extra node ``kubemagic-node2`` (tests/cluster/node) for
  the test module and removes it at its end, so the rest of the suite runs on one node; returns an
  :class:`tests.cluster.nodes.ExtraNode`. The helpers to stop, start and restart things are in
  tests/cluster/nodes.py.
* Every test under tests/cluster, and every test that uses ``k8s_cluster``, gets the ``cluster``
  marker (``-m "not cluster"`` deselects them).
"""

from __future__ import annotations

import base64
import fcntl
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.cluster.nodes import SECOND_NODE, add_node, remove_node

HARNESS = Path(__file__).resolve().parent
REPO = HARNESS.parent.parent
STATE = Path(os.environ.get("KUBEMAGIC_CLUSTER_STATE", "/var/lib/kubemagic-cluster"))
HOST_IP = "10.88.0.1"
IMAGE = "kubemagic-engine:dev"
UP_TIMEOUT_S = float(os.environ.get("KUBEMAGIC_CLUSTER_UP_TIMEOUT", "5400"))
UP_SCRIPT = os.environ.get("KUBEMAGIC_CLUSTER_UP", str(HARNESS / "up"))  # override: tests of the harness
FIXTURE = "k8s_cluster"

_up_result: dict = {}  # {"ok": bool, "output": str} once up ran in this process


def _needs_cluster(item) -> bool:
    return FIXTURE in getattr(item, "fixturenames", ()) or HARNESS in Path(str(getattr(item, "path", ""))).resolve().parents


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _needs_cluster(item):
            item.add_marker(pytest.mark.cluster)


def _harness_logs(max_lines: int = 60) -> str:
    logs = STATE / "logs"
    parts = []
    for f in sorted(logs.glob("*.log")) if logs.is_dir() else []:
        try:
            lines = f.read_text(errors="replace").splitlines()[-max_lines:]
        except OSError as e:
            lines = [f"(unreadable: {e})"]
        parts.append(f"===== {f} (last {max_lines} lines) =====\n" + "\n".join(lines))
    return "\n".join(parts) or f"(no component logs under {logs})"


def _run_up(config=None) -> dict:
    """Runs tests/cluster/up, streaming its output live and keeping a copy."""
    capman = config.pluginmanager.getplugin("capturemanager") if config is not None else None
    tw = config.get_terminal_writer() if config is not None else None
    lines: list[str] = []

    def run():
        try:
            proc = subprocess.Popen(
                ["bash", UP_SCRIPT], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, text=True, errors="replace", start_new_session=True)
        except OSError as e:
            return {"ok": False, "output": f"could not run tests/cluster/up: {e}"}
        timed_out = threading.Event()

        def kill():  # the script and whatever it runs (builds), never the daemons it detached
            timed_out.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass

        watchdog = threading.Timer(UP_TIMEOUT_S, kill)
        watchdog.daemon = True
        watchdog.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if tw is not None:
                    tw.write(line)
                    tw.flush()
            rc = proc.wait()
        finally:
            watchdog.cancel()
        if timed_out.is_set():
            lines.append(f"tests/cluster/up killed after {UP_TIMEOUT_S:.0f} s (KUBEMAGIC_CLUSTER_UP_TIMEOUT)\n")
        return {"ok": rc == 0 and not timed_out.is_set(), "output": "".join(lines), "rc": rc}

    if capman is not None:
        with capman.global_and_fixture_disabled():
            if tw is not None:
                tw.line()
                tw.sep("-", "tests/cluster/up (real single-node Kubernetes)")
            return run()
    return run()


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session):
    # bring the cluster up before the first test, so a cold build is not cut by a test timeout
    if session.config.option.collectonly:
        return None
    if any(_needs_cluster(item) and FIXTURE in getattr(item, "fixturenames", ()) for item in session.items):
        _up_result.update(_run_up(session.config))
    return None


def _env_file() -> dict:
    env = {}
    f = STATE / "env"
    if f.is_file():
        for line in f.read_text().splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                env[k.strip()] = v.strip()
    return env


@dataclass
class Cluster:
    """Handle on the running test cluster (see tests/cluster/README.md)."""

    kubeconfig: str
    host_ip: str
    image: str
    api: object  # kubernetes.client.ApiClient authenticated as cluster admin
    kubectl: str
    env: dict
    workdir: Path
    _namespaces: list = field(default_factory=list)

    # -- helpers ---------------------------------------------------------------------------
    def create_namespace(self, prefix: str = "test") -> str:
        """Creates a uniquely named namespace (deleted at session end) and returns its name."""
        from kubernetes import client

        prefix = re.sub(r"[^a-z0-9-]", "-", prefix.lower()).strip("-")[:40] or "test"
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        client.CoreV1Api(self.api).create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"kubemagic-test": "1"})))
        self._namespaces.append(name)
        # pods need the namespace's default ServiceAccount (made by the controller-manager)
        core = client.CoreV1Api(self.api)
        deadline = time.monotonic() + 60
        while True:
            try:
                core.read_namespaced_service_account("default", name)
                break
            except client.ApiException as e:
                if e.status != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        return name

    def service_account_kubeconfig(self, namespace: str, name: str, expiration_seconds: int = 3600) -> str:
        """A kubeconfig that authenticates as ServiceAccount namespace/name (created if missing)
        with a bound token from the TokenRequest API; grant it rights with Roles yourself."""
        from kubernetes import client

        core = client.CoreV1Api(self.api)
        try:
            core.read_namespaced_service_account(name, namespace)
        except client.ApiException as e:
            if e.status != 404:
                raise
            core.create_namespaced_service_account(
                namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name)))
        tr = core.create_namespaced_service_account_token(
            name, namespace,
            client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=expiration_seconds)))
        token = tr.status.token
        ca = self.api.configuration.ssl_ca_cert
        ca_data = base64.b64encode(Path(ca).read_bytes()).decode() if ca else ""
        server = self.api.configuration.host
        path = self.workdir / f"sa-{namespace}-{name}-{uuid.uuid4().hex[:6]}.kubeconfig"
        path.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: kubemagic\n  cluster:\n    server: {server}\n"
            f"    certificate-authority-data: {ca_data}\n"
            f"users:\n- name: {namespace}-{name}\n  user:\n    token: {token}\n"
            f"contexts:\n- name: {namespace}-{name}\n  context:\n    cluster: kubemagic\n"
            f"    user: {namespace}-{name}\n    namespace: {namespace}\n"
            f"current-context: {namespace}-{name}\n")
        path.chmod(0o600)
        return str(path)

    def run_kubectl(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([self.kubectl, "--kubeconfig", self.kubeconfig, *args], check=check,
                              capture_output=True, text=True, timeout=timeout)

    def harness_logs(self) -> str:
        return _harness_logs()

    def _cleanup(self) -> None:
        from kubernetes import client

        core = client.CoreV1Api(self.api)
        for ns in self._namespaces:
            try:
                core.delete_namespace(ns, body=client.V1DeleteOptions(propagation_policy="Background"))
            except Exception as e:  # noqa: BLE001 - cleanup must go on
                print(f"could not delete namespace {ns}: {e}", file=sys.stderr)
        self._namespaces.clear()


def _healthy_apiserver(kubeconfig: str) -> tuple[bool, str]:
    """GET /readyz with the kubeconfig's credentials (independent of the client's API style)."""
    import ssl
    import urllib.request

    try:
        from kubernetes import config

        api = config.new_client_from_config(config_file=kubeconfig)
        try:
            cfg = api.configuration
            ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
            if cfg.cert_file:
                ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
            with urllib.request.urlopen(cfg.host + "/readyz", context=ctx, timeout=10) as r:
                body = r.read().decode(errors="replace").strip()
            return body == "ok", body
        finally:
            api.close()
    except Exception as e:  # noqa: BLE001
        return False, repr(e)


@pytest.fixture(scope="session")
def k8s_cluster(request, tmp_path_factory):
    kubeconfig = str(STATE / "admin.kubeconfig")
    if _up_result and not _up_result.get("ok"):
        pytest.fail("tests/cluster/up failed; the cluster is not available:\n"
                    + _up_result.get("output", "")[-20000:] + "\n" + _harness_logs(), pytrace=False)
    ok, why = (False, "not checked")
    if os.path.exists(kubeconfig):
        ok, why = _healthy_apiserver(kubeconfig)
    if not ok:
        res = _run_up(request.config)
        _up_result.update(res)
        if not res["ok"]:
            pytest.fail("tests/cluster/up failed; the cluster is not available:\n"
                        + res["output"][-20000:] + "\n" + _harness_logs(), pytrace=False)
        ok, why = _healthy_apiserver(kubeconfig)
        if not ok:
            pytest.fail(f"the apiserver is not healthy after tests/cluster/up ({why}):\n"
                        + _harness_logs(), pytrace=False)

    from kubernetes import config

    env = _env_file()
    api = config.new_client_from_config(config_file=kubeconfig)
    cluster = Cluster(
        kubeconfig=kubeconfig,
        host_ip=env.get("KUBEMAGIC_TEST_HOST_IP", HOST_IP),
        image=env.get("KUBEMAGIC_TEST_IMAGE", IMAGE),
        api=api,
        kubectl=env.get("KUBECTL", "kubectl"),
        env=env,
        workdir=tmp_path_factory.mktemp("k8s-cluster"),
    )
    yield cluster
    cluster._cleanup()
    api.close()


@pytest.fixture(scope="module")
def second_node(k8s_cluster):
    """The extra node kubemagic-node2, Ready, for this test module; removed at its end.

    Sessions running at the same time share the cluster: each holds a shared lock while it uses
    the node, and only the last one to finish removes it (the others' tests keep their node)."""
    with open(STATE / f"{SECOND_NODE}.users.lock", "w") as users:
        fcntl.flock(users, fcntl.LOCK_SH)
        yield add_node(SECOND_NODE)
        try:
            fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{SECOND_NODE} is still used by another test session; leaving it", file=sys.stderr)
        else:
            remove_node(SECOND_NODE)
