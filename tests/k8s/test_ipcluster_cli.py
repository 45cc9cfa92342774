"""``ipcluster start --engines=kubernetes``: the launcher plugin as a plain ipyparallel user
meets it — a profile's config files, the ipcluster command line, a client from the
connection file, ``ipcluster stop`` — on the real cluster, as the least-privilege service
account of ``kubemagic rbac``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import ipyparallel as ipp
import psutil
import pytest

from kubemagic.k8s.ports import free_port_window
from kubemagic.k8s.options import DEFAULT_PORT_RANGE, parse_port_range

from .helpers import leftovers, make_tenant, wait_until

pytestmark = pytest.mark.cluster

CLUSTER_ID = "cli"


def _ipcluster(profile: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ipyparallel.cluster", *args,
           f"--profile-dir={profile}", f"--cluster-id={CLUSTER_ID}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


@ipp.interactive  # pickled by value: engines cannot import the tests package
def _where():
    import os
    import socket

    return socket.gethostname(), os.environ["KUBEMAGIC_ENGINE_INDEX"], os.getuid()


def test_ipcluster_start_engines_kubernetes_then_stop(k8s_cluster, tmp_path):
    tenant = make_tenant(k8s_cluster, "ipcluster")
    ports = free_port_window(*parse_port_range(DEFAULT_PORT_RANGE))
    profile = tmp_path / "profile_k8s"
    profile.mkdir()
    # what a user writes once into their profile (ipython profile create --parallel)
    (profile / "ipcluster_config.py").write_text(
        "c.Cluster.controller_ip = '0.0.0.0'\n"
        f"c.Cluster.controller_location = {k8s_cluster.host_ip!r}\n"
        f"c.KubernetesEngineSetLauncher.namespace = {tenant.namespace!r}\n"
        f"c.KubernetesEngineSetLauncher.kubeconfig = {tenant.kubeconfig!r}\n"
        f"c.KubernetesEngineSetLauncher.image = {k8s_cluster.image!r}\n"
    )
    (profile / "ipcontroller_config.py").write_text(
        f"c.IPController.ports = {list(ports)!r}\nc.HeartMonitor.period = 500\n")
    try:
        started = _ipcluster(profile, "start", "--engines=kubernetes", "-n", "2", "--daemonize")
        assert started.returncode == 0, started.stdout + started.stderr
        client = ipp.Client(str(profile / "security" / f"ipcontroller-{CLUSTER_ID}-client.json"))
        try:
            client.wait_for_engines(2, timeout=120)
            rows = sorted(client[:].apply_sync(_where))
        finally:
            client.close()
        # two engine pods of one Job, slots 0 and 1, not root
        assert [r[1] for r in rows] == ["0", "1"], rows
        assert all(r[0].startswith("kubemagic-") and r[2] == 1000 for r in rows), rows
        assert len(leftovers(k8s_cluster, tenant.namespace)["jobs"]) == 1
    finally:
        stopped = _ipcluster(profile, "stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    left = wait_until(lambda: leftovers(k8s_cluster, tenant.namespace) == {
        "jobs": [], "pods": [], "secrets": []}, 60)
    assert left, leftovers(k8s_cluster, tenant.namespace)
    # and the controller that `ipcluster start --daemonize` left running is gone too
    assert wait_until(lambda: not _processes_using(profile), 30), _processes_using(profile)


def _processes_using(profile: Path) -> list[str]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(profile) in cmdline:
            found.append(cmdline)
    return found
