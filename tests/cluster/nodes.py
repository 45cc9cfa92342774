"""Extra nodes and component restarts of the test cluster, for tests (see tests/cluster/README.md).

Thin wrappers around ``tests/cluster/node`` and ``tests/cluster/restart``: each runs the script,
returns its output, and raises :class:`ClusterScriptError` with that output when it fails, so a
failing test shows why the harness could not do what it asked.

The ``second_node`` fixture (tests/cluster/fixture.py) adds ``kubemagic-node2`` for a test module
and removes it afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

HARNESS = Path(__file__).resolve().parent
STATE = Path(os.environ.get("KUBEMAGIC_CLUSTER_STATE", "/var/lib/kubemagic-cluster"))
SECOND_NODE = "kubemagic-node2"


class ClusterScriptError(RuntimeError):
    """A harness script failed; the message holds its command line, exit code and output."""


@dataclass(frozen=True)
class ExtraNode:
    """An extra node as tests/cluster/node set it up ($STATE/nodes/NAME/node.env)."""

    name: str
    node_ip: str  # 10.88.255.K on the cluster bridge, the Node's InternalIP
    pod_cidr: str  # 10.89.K.0/24
    netns: str  # its network namespace (/run/netns/NAME)


def _run(script: str, *args: str, timeout: float) -> str:
    cmd = ["bash", str(HARNESS / script), *args]
    t0 = time.monotonic()
    # own session: on a timeout the script and what it waits on go, never the daemons it started
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, errors="replace", start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise ClusterScriptError(f"{' '.join(cmd)} did not finish within {timeout:.0f} s:\n{out}") from None
    if proc.returncode != 0:
        raise ClusterScriptError(
            f"{' '.join(cmd)} failed (exit {proc.returncode}, {time.monotonic() - t0:.1f} s):\n{out}")
    return out


def node_info(name: str) -> ExtraNode:
    """The addresses of an extra node that exists (added, running or stopped)."""
    env_file = STATE / "nodes" / name / "node.env"
    try:
        env = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    except FileNotFoundError:
        raise ClusterScriptError(f"there is no extra node {name} ({env_file} is missing); "
                                 f"add it with add_node({name!r})") from None
    return ExtraNode(name=env["NAME"], node_ip=env["NODE_IP"], pod_cidr=env["POD_CIDR"], netns=env["NETNS"])


def add_node(name: str = SECOND_NODE, timeout: float = 600) -> ExtraNode:
    """Creates the node (or starts it when stopped); returns once it is Ready."""
    _run("node", "add", name, timeout=timeout)
    return node_info(name)


def stop_node(name: str = SECOND_NODE, timeout: float = 120) -> str:
    """The node vanishes like a reclaimed VM: every process SIGKILLed at once, its link down."""
    return _run("node", "stop", name, timeout=timeout)


def start_node(name: str = SECOND_NODE, timeout: float = 600) -> str:
    """Brings a stopped node back (as after a reboot); returns once it is Ready."""
    return _run("node", "start", name, timeout=timeout)


def remove_node(name: str = SECOND_NODE, timeout: float = 300) -> str:
    """Stops the node and removes its Node object and everything it put on the host."""
    return _run("node", "remove", name, timeout=timeout)


def restart(component: str, timeout: float = 300) -> str:
    """SIGKILLs a component of node 1 / the control plane and starts it again with the same command
    line; returns once it is healthy. The output's last line says how long the outage lasted."""
    return _run("restart", component, timeout=timeout)
