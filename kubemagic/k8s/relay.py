"""Signals for engine processes in pods, through the controller they are connected to.

ipyparallel's local launchers signal their engine processes directly; here the processes
run in pods. Three ways could reach them:

* ``kubectl exec … kill``: needs ``pods/exec``, the right to run any command in the engine
  pods — which hold the controller's keys. The least-privilege Role does not grant it,
  and many clusters forbid it;
* an annotation on the pod, read by the engine from a downward-API volume: needs ``patch``
  on pods, and the kubelet refreshes such files only on its sync period (up to a minute);
* ipyparallel's own ``signal_request`` on the control channel every engine already has to
  the controller beside the kernel. This is the one used: no extra permission, the message
  arrives in milliseconds, and it is what ``Client.send_signal`` sends. The engine process
  answers it itself (:mod:`.engine`, where ipyparallel needs its nanny process), and is
  addressed by its zmq identity, which is its pod name: the launcher knows which engines
  are its own without asking the hub.
"""

from __future__ import annotations

import json
import time
from typing import Any

import zmq
from ipyparallel.util import connect, disambiguate_ip_address
from jupyter_client.session import Session


def send_signal(
    client_file: str, pods: list[str], sig: int, timeout: float
) -> tuple[dict[str, str], list[str]]:
    """Ask the engine of each pod in ``pods`` to signal its own process with ``sig``.

    ``client_file`` is the controller's client connection file (its key and control port).
    Returns the engines that refused (pod name -> the engine's error, e.g. an unknown
    signal) and the pods whose engine did not answer within ``timeout`` seconds (not
    registered yet, or gone).
    """
    with open(client_file) as f:
        info: dict[str, Any] = json.load(f)
    proto, _, host = info["interface"].partition("://")
    url = f"{proto}://{disambiguate_ip_address(host, info.get('location'))}:{info['control']}"
    session = Session(
        key=info["key"].encode(),
        signature_scheme=info["signature_scheme"],
        packer=info.get("pack", "json"),
        unpacker=info.get("unpack", "json"),
    )
    server_key = info.get("curve_serverkey")
    context = zmq.Context()
    try:
        socket = context.socket(zmq.DEALER)
        socket.linger = 0
        connect(socket, url, curve_serverkey=server_key.encode() if server_key else None)
        waiting = {
            session.send(socket, "signal_request", content={"sig": sig}, ident=pod.encode())[
                "header"
            ]["msg_id"]: pod
            for pod in pods
        }
        refused: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        while waiting and socket.poll(max(0.0, deadline - time.monotonic()) * 1000):
            _, reply = session.recv(socket, mode=0)
            pod = waiting.pop((reply or {}).get("parent_header", {}).get("msg_id"), None)
            content = (reply or {}).get("content") or {}
            if pod is not None and content.get("status") != "ok":
                refused[pod] = f"{content.get('ename')}: {content.get('evalue')}"
        return refused, sorted(waiting.values())
    finally:
        context.destroy(linger=0)
