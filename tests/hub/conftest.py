"""Fixtures for tests against the real JupyterHub of tests/hub/up (see README.md).

* ``hub`` (session): runs ``bash tests/hub/up`` once, after the ``k8s_cluster`` fixture brought
  the cluster up, and returns a :class:`Hub` from ``$STATE/hub.env``. If the hub cannot come up,
  the tests fail with up's output and the hub's log: they never skip.
* ``hub_user``: a fresh user whose server was started through the REST API and is ready
  (:class:`HubUser`); its server is stopped, the user deleted and its namespace removed afterwards.
* :meth:`HubUser.kernel` starts a kernel through the user's Jupyter server API (through the proxy,
  with a token of the user's) and returns a :class:`Kernel` that runs code over the kernel's
  websocket, as JupyterLab does.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HUB_DIR = Path(__file__).resolve().parent
REPO = HUB_DIR.parent.parent
STATE = Path(os.environ.get("KUBEMAGIC_CLUSTER_STATE", "/var/lib/kubemagic-cluster"))
UP_TIMEOUT_S = float(os.environ.get("KUBEMAGIC_HUB_UP_TIMEOUT", "900"))

_up: dict = {}


def _hub_log(lines: int = 120) -> str:
    f = STATE / "hub" / "jupyterhub.log"
    try:
        return f"===== {f} (last {lines} lines) =====\n" + "\n".join(f.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(no hub log: {e})"


def _run_up(config) -> dict:
    """bash tests/hub/up, its output shown live (outside output capture) and kept."""
    capman = config.pluginmanager.getplugin("capturemanager")
    tw = config.get_terminal_writer()
    lines: list[str] = []

    def run() -> dict:
        t0 = time.monotonic()
        proc = subprocess.Popen(["bash", str(HUB_DIR / "up")], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                errors="replace", start_new_session=True)
        timer = threading.Timer(UP_TIMEOUT_S, proc.kill)
        timer.daemon = True
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                # the token and password go to hub.env, not to the terminal
                lines.append(line)
                if not line.startswith(("HUB_API_TOKEN=", "HUB_PASSWORD=")):
                    tw.write(line)
                    tw.flush()
            rc = proc.wait()
        finally:
            timer.cancel()
        return {"ok": rc == 0, "rc": rc, "output": "".join(lines), "seconds": time.monotonic() - t0}

    with capman.global_and_fixture_disabled():
        tw.line()
        tw.sep("-", "tests/hub/up (JupyterHub + KubeSpawner on the test cluster)")
        return run()


def _hub_env() -> dict:
    env = {}
    f = STATE / "hub.env"
    for line in f.read_text().splitlines() if f.is_file() else []:
        if "=" in line:
            k, v = line.split("=", 1)
            env[k.strip()] = v.strip()
    return env


@dataclass
class Kernel:
    """A kernel of a user's server, driven over its websocket (the protocol JupyterLab uses)."""

    user: "HubUser"
    kernel_id: str
    ws: object
    session: str = field(default_factory=lambda: uuid.uuid4().hex)

    def execute(self, code: str, timeout: float = 300) -> dict:
        """Runs code; returns {"stdout", "stderr", "result", "error", "status"} once the kernel is
        idle again after it. Comm (widget) messages are ignored."""
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": self.user.name,
                       "session": self.session, "date": "", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True}}))
        out = {"stdout": "", "stderr": "", "result": None, "error": None, "status": None}
        idle = replied = False
        deadline = time.monotonic() + timeout
        while not (idle and replied):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply to the cell within {timeout} s; so far: {out}")
            self.ws.settimeout(min(left, 30))
            try:
                raw = self.ws.recv()
            except Exception as e:  # noqa: BLE001 - websocket timeout: loop to the deadline
                if type(e).__name__ == "WebSocketTimeoutException":
                    continue
                raise
            if not isinstance(raw, str):
                continue  # binary frames: widget buffers
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["header"]["msg_type"], msg["content"]
            if kind == "stream":
                out[content["name"]] += content["text"]
            elif kind in ("execute_result", "display_data") and kind == "execute_result":
                out["result"] = content["data"].get("text/plain")
            elif kind == "error":
                out["error"] = "\n".join(content.get("traceback", [])) or f"{content['ename']}: {content['evalue']}"
            elif kind == "status" and content["execution_state"] == "idle":
                idle = True
            elif kind == "execute_reply":
                replied = True
                out["status"] = content["status"]
        return out

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.user.server_api("DELETE", f"kernels/{self.kernel_id}")


@dataclass
class HubUser:
    hub: "Hub"
    name: str
    token: str = field(repr=False)  # the user's own API token (access to their server)
    namespace: str

    def server_api(self, method: str, path: str, **kw):
        import requests

        r = requests.request(method, f"{self.hub.url}/user/{self.name}/api/{path}",
                             headers={"Authorization": f"token {self.token}"}, timeout=60, **kw)
        r.raise_for_status()
        return r.json() if r.content else None

    def kernel(self) -> Kernel:
        import websocket

        k = self.server_api("POST", "kernels", json={"name": "python3"})
        ws_url = self.hub.url.replace("http", "ws", 1) + f"/user/{self.name}/api/kernels/{k['id']}/channels"
        ws = websocket.create_connection(ws_url, header=[f"Authorization: token {self.token}"], timeout=60)
        return Kernel(self, k["id"], ws)


@dataclass
class Hub:
    url: str
    api_token: str = field(repr=False)
    password: str = field(repr=False)
    namespace_template: str
    up_seconds: float
    timings: dict = field(default_factory=dict)

    def api(self, method: str, path: str, ok=(200, 201, 202, 204), **kw):
        import requests

        r = requests.request(method, f"{self.url}/hub/api/{path}",
                             headers={"Authorization": f"token {self.api_token}"}, timeout=60, **kw)
        if r.status_code not in ok:
            raise AssertionError(f"{method} /hub/api/{path}: {r.status_code} {r.text}\n{_hub_log(60)}")
        return r.json() if r.content else None

    def user_model(self, name: str) -> dict:
        return self.api("GET", f"users/{name}")

    def start_server(self, name: str, timeout: float = 180) -> float:
        """POST .../server, then wait until the hub says it is ready; returns the seconds it took."""
        t0 = time.monotonic()
        self.api("POST", f"users/{name}/server")
        while True:
            server = self.user_model(name)["servers"].get("")
            if server and server.get("ready"):
                return time.monotonic() - t0
            if server is None and time.monotonic() - t0 > 5:
                raise AssertionError(f"the server of {name} is gone (spawn failed)\n{_hub_log(80)}")
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"the server of {name} not ready after {timeout} s: {server}\n{_hub_log(80)}")
            time.sleep(0.25)

    def stop_server(self, name: str, timeout: float = 120) -> float:
        t0 = time.monotonic()
        self.api("DELETE", f"users/{name}/server", ok=(202, 204, 400))
        while self.user_model(name)["servers"]:
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"the server of {name} did not stop in {timeout} s\n{_hub_log(80)}")
            time.sleep(0.25)
        return time.monotonic() - t0

    def new_user(self, prefix: str = "kmt") -> HubUser:
        name = f"{prefix}{uuid.uuid4().hex[:8]}"
        self.api("POST", f"users/{name}")
        token = self.api("POST", f"users/{name}/tokens",
                         json={"note": "tests/hub", "expires_in": 3600,
                               "scopes": [f"access:servers!user={name}"]})["token"]
        return HubUser(self, name, token, self.namespace_template.format(username=name))


@pytest.fixture(scope="session")
def hub(k8s_cluster, request) -> Hub:
    if not _up:
        _up.update(_run_up(request.config))
    if not _up["ok"]:
        pytest.fail(f"tests/hub/up failed (exit {_up['rc']}); the hub is not available:\n"
                    + _up["output"][-20000:] + "\n" + _hub_log(), pytrace=False)
    env = _hub_env()
    missing = {"HUB_URL", "HUB_API_TOKEN", "HUB_PASSWORD", "HUB_USER_NAMESPACE"} - set(env)
    if missing:
        pytest.fail(f"{STATE / 'hub.env'} lacks {sorted(missing)}:\n{_up['output'][-5000:]}", pytrace=False)
    return Hub(url=env["HUB_URL"], api_token=env["HUB_API_TOKEN"], password=env["HUB_PASSWORD"],
               namespace_template=env["HUB_USER_NAMESPACE"], up_seconds=_up["seconds"])


@contextlib.contextmanager
def spawned_user(hub: Hub, k8s_cluster, prefix: str = "kmt"):
    """A fresh user whose server is running; stopped, deleted and its namespace removed after."""
    from kubernetes import client

    user = hub.new_user(prefix)
    try:
        hub.timings["spawn to ready"] = hub.start_server(user.name)
        yield user
    finally:
        try:
            if hub.user_model(user.name)["servers"]:
                hub.stop_server(user.name)
            hub.api("DELETE", f"users/{user.name}", ok=(204, 404))
        finally:
            try:
                client.CoreV1Api(k8s_cluster.api).delete_namespace(user.namespace)
            except client.ApiException as e:
                if e.status != 404:
                    raise


@pytest.fixture
def hub_user(hub, k8s_cluster):
    """A fresh user with a running server (see :func:`spawned_user`)."""
    with spawned_user(hub, k8s_cluster) as user:
        yield user
