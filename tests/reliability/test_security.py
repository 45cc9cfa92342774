"""Security of a Kubernetes session on the real cluster (issue 5, item 5).

* The engine connection secrets (the HMAC key, and the CurveZMQ server key — with CurveZMQ
  on, ipyparallel blanks the HMAC key and the server key is the one thing a client needs)
  live in the Secret only: not in the Job, the pod specs, the pod logs, the events, the
  ConfigMaps, the controller's command line, the session's status/logs or its widget state.
  (The same check in a real kernel's comm state: ``test_kernel_k8s.py``.)
* CurveZMQ is on by default, and a client without the server key cannot submit work: a
  task that would leave a marker file on an engine never runs — while the same task sent
  with the key does (so the probe itself is known to work).
* Engines run as uid 1000, non-root, without privilege escalation or capabilities.
* Everything here runs as the service account bound to the Role ``kubemagic rbac`` prints;
  a missing permission's clear 403 is proven by ``tests/k8s/test_backend.py``
  (``test_missing_permissions_are_all_named_up_front``, ``test_a_403_mid_start_is_clear_and_
  leaves_nothing``) and, in a kernel, by ``test_kernel_k8s.py`` (``namespace-forbidden``).
"""

from __future__ import annotations

import glob
import json
import os
import stat
import uuid
from dataclasses import dataclass
from typing import Any

import ipyparallel as ipp
import pytest
import zmq
from ipyparallel import serialize
from jupyter_client.session import Session

from ._support import (
    NOTHING,
    admin,
    clean_process_env,
    connection_info,
    engine_pods,
    leftovers,
    make_tenant,
    new_session,
    processes_of,
    secret_values,
    wait_for,
)
from tests.k8s.helpers import raw

pytestmark = pytest.mark.cluster


@ipp.interactive  # pickled by value: engines cannot import the tests package
def leave_marker(path):
    import socket

    with open(path, "w") as f:
        f.write("ran")
    return socket.gethostname()


@ipp.interactive
def marker_exists(path):
    import os

    return os.path.exists(path)


@ipp.interactive
def remove_marker(path):
    import os

    if os.path.exists(path):
        os.remove(path)


@dataclass
class Secured:
    session: Any
    namespace: str
    info: dict  # the engine connection info, from the Secret


@pytest.fixture(scope="module")
def secured(k8s_cluster):
    with clean_process_env():
        tenant = make_tenant(k8s_cluster, "security")
        s = new_session(k8s_cluster, tenant)  # defaults: CurveZMQ not asked for
        s.start()
        try:
            assert s.map(abs, [-1, -2], progress=False) == [1, 2]
            yield Secured(s, tenant.namespace, connection_info(k8s_cluster, tenant.namespace))
        finally:
            s.stop()
        assert leftovers(k8s_cluster, tenant.namespace) == NOTHING


def _widget_states(widget: Any) -> list[dict]:
    states = [widget.get_state()]
    for child in getattr(widget, "children", ()):
        states.extend(_widget_states(child))
    return states


def test_curve_is_on_by_default(secured):
    assert secured.info.get("curve_serverkey"), "CurveZMQ must be on by default"
    # switched on for the controller alone, not for whatever else the kernel starts later
    assert "IPP_ENABLE_CURVE" not in os.environ
    # ipyparallel turns message signing off under CurveZMQ ("redundant"): the server key,
    # known only from the Secret, is then what keeps other clients out (next test)
    print(f"\nHMAC key under CurveZMQ: {secured.info.get('key')!r}")


def test_keys_are_only_in_the_secret(k8s_cluster, secured):
    s, ns = secured.session, secured.namespace
    secrets = secret_values(secured.info)
    assert "curve_serverkey" in secrets
    core, batch = admin(k8s_cluster)
    places: dict[str, str] = {}
    for job in batch.list_namespaced_job(ns).items:
        places[f"Job {job.metadata.name}"] = raw(job, k8s_cluster)
    # An engine can register before its kubelet reports the container as running (under
    # load that report lagged 17 s here), and the API serves no log until then.
    def started() -> list[Any]:
        pods = engine_pods(k8s_cluster, ns, s.cluster_id)
        running = [p for p in pods
                   if any(c.state.running for c in p.status.container_statuses or [])]
        return pods if len(pods) == len(running) == 2 else []

    pods = wait_for(started, 60, "both engine containers reported running")
    for pod in pods:
        name = pod.metadata.name
        places[f"pod {name}"] = raw(pod, k8s_cluster)
        places[f"log of {name}"] = core.read_namespaced_pod_log(name, ns, container="engine")
        assert "Completed registration" in places[f"log of {name}"]  # really the engine log
    places["events"] = raw(core.list_namespaced_event(ns), k8s_cluster)
    places["configmaps"] = raw(core.list_namespaced_config_map(ns), k8s_cluster)
    places["controller command lines"] = "\n".join(
        " ".join(p.cmdline()) for p in processes_of(s.cluster_id))
    places["session.logs()"] = s.logs()
    places["session.status()"] = json.dumps(s.status(), default=str)
    places["widget state"] = json.dumps(_widget_states(s.widget), default=str)
    assert "engines ready" in places["widget state"]  # really the widget
    for where, text in places.items():
        for name, value in secrets.items():
            assert value not in text, f"the {name} appears in the {where}"
    # the Secret holds exactly the connection info, owned by the Job (goes with it)
    secret = core.list_namespaced_secret(ns, label_selector="app.kubernetes.io/name=kubemagic")
    (only,) = secret.items
    assert [o.kind for o in only.metadata.owner_references] == ["Job"]
    # the copies on the kernel's machine are readable by their owner only
    files = glob.glob(os.path.join(s.controller.profile_dir, "security", "ipcontroller-*.json"))
    assert len(files) == 2, files
    for f in files:
        assert stat.S_IMODE(os.stat(f).st_mode) & 0o077 == 0, f"{f} is readable by others"


def test_engines_run_as_non_root(k8s_cluster, secured):
    s = secured.session
    assert s.client[s.ready_ids()].apply_sync(os.getuid) == [1000, 1000]
    for pod in engine_pods(k8s_cluster, secured.namespace, s.cluster_id):
        ctx = pod.spec.security_context
        assert ctx.run_as_non_root is True and ctx.run_as_user == 1000
        (container,) = pod.spec.containers
        assert container.security_context.allow_privilege_escalation is False
        assert container.security_context.capabilities.drop == ["ALL"]
        assert pod.spec.automount_service_account_token is False


def _client_info(s: Any) -> dict:
    (path,) = glob.glob(os.path.join(s.controller.profile_dir, "security", "ipcontroller-*-client.json"))
    with open(path) as f:
        return json.load(f)


def _submit(host: str, port: int, info: dict, path: str, serverkey: bytes | None,
            wait: float = 5.0) -> str:
    """Send one ``apply_request`` of ``leave_marker(path)`` to the load-balanced task port
    with a raw zmq socket, as any process on the pods' network could; return what
    happened."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.sndtimeo = int(wait * 1000)
    if serverkey is not None:
        sock.curve_serverkey = serverkey
        sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
    try:
        sock.connect(f"tcp://{host}:{port}")
        session = Session(key=info.get("key", "").encode(), username="intruder",
                          signature_scheme=info["signature_scheme"], packer=info["pack"],
                          unpacker=info["unpack"])
        bufs = serialize.pack_apply_message(leave_marker, (path,), {})
        try:
            session.send(sock, "apply_request", content={}, buffers=bufs, metadata={})
        except zmq.Again:
            return "not sent"
        if not sock.poll(wait * 1000):
            return "no reply"
        idents, msg = session.feed_identities(sock.recv_multipart())
        reply = session.deserialize(msg)
        return f"reply {reply['content'].get('status')}"
    finally:
        sock.close()
        ctx.term()


def test_a_client_without_the_curve_key_cannot_submit_work(k8s_cluster, secured):
    s = secured.session
    info = _client_info(s)
    assert info["curve_serverkey"] == secured.info["curve_serverkey"]
    host, port = k8s_cluster.host_ip, info["task"]
    engines = s.ready_ids()

    def markers(path: str) -> list[bool]:
        return s.client[engines].apply_sync(marker_exists, path)

    # the probe works: with the server key, the task runs and leaves its marker
    path = f"/tmp/kubemagic-probe-{uuid.uuid4().hex}"
    assert _submit(host, port, info, path, info["curve_serverkey"].encode()) == "reply ok"
    assert sorted(markers(path)) == [False, True]
    s.client[engines].apply_sync(remove_marker, path)

    # without CurveZMQ, or with a made-up server key, nothing runs
    public, _ = zmq.curve_keypair()
    for what, serverkey in (("no CurveZMQ", None), ("a wrong server key", public)):
        path = f"/tmp/kubemagic-intruder-{uuid.uuid4().hex}"
        outcome = _submit(host, port, info, path, serverkey)
        print(f"\nclient with {what}: {outcome}")
        assert outcome in ("not sent", "no reply"), f"{what}: {outcome}"
        assert markers(path) == [False, False], f"a task from a client with {what} ran"

    # nor can ipyparallel's own Client connect without the key
    path = os.path.join(s.controller.profile_dir, "no-curve-client.json")
    with open(path, "w") as f:
        json.dump({k: v for k, v in info.items() if k != "curve_serverkey"}, f)
    with pytest.raises((TimeoutError, OSError)):
        ipp.Client(path, timeout=5)
    # and the fleet is unharmed
    assert s.map(abs, [-3], progress=False) == [3]
