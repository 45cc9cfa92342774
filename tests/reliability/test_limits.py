"""Admin limits on the real cluster: a namespace ResourceQuota and ``c.Kubemagic.max_engines``.

Both must fail fast with one clear message (the quota quoted, the limit and the file that
sets it named), keep what already runs, and leave nothing behind.
"""

from __future__ import annotations

import time

import pytest

from kubemagic import config
from kubemagic.errors import StartupError, UsageError

from ._support import NOTHING, clean_process_env, leftovers, make_tenant, new_session, wait_for

pytestmark = pytest.mark.cluster

QUOTA = """apiVersion: v1
kind: ResourceQuota
metadata:
  name: team-quota
  namespace: {ns}
spec:
  hard:
    pods: "2"
"""


@pytest.fixture
def site_config(tmp_path, monkeypatch):
    """An admin's kubemagic_config.py in a system config directory."""
    system = tmp_path / "etc-jupyter"
    system.mkdir()
    monkeypatch.setattr("jupyter_core.paths.jupyter_config_path", lambda: [str(system)])
    config.settings.cache_clear()
    yield system
    config.settings.cache_clear()


def test_resource_quota_refusal_is_quoted_at_once_and_nothing_leaks(k8s_cluster):
    from tests.k8s.helpers import kubectl_apply

    tenant = make_tenant(k8s_cluster, "quota")
    kubectl_apply(k8s_cluster, QUOTA.format(ns=tenant.namespace))
    with clean_process_env():
        # start: 3 engines where the quota admits 2 pods
        t0 = time.monotonic()
        with pytest.raises(StartupError) as e:
            new_session(k8s_cluster, tenant, n=3, start_timeout=120).start()
        took = time.monotonic() - t0
        text = str(e.value)
        assert "exceeded quota: team-quota" in text and "limited: pods=2" in text, text
        assert "resourcequota" in text, text
        assert took < 60, f"the refusal took {took:.0f} s: it waited for the timeout"
        wait_for(lambda: leftovers(k8s_cluster, tenant.namespace) == NOTHING, 60,
                 "no kubemagic objects after a refused start")
        # scale: 2 run, 3 are refused; the 2 keep working and the Job goes back to 2
        session = new_session(k8s_cluster, tenant, n=2, start_timeout=120).start()
        try:
            with pytest.raises(StartupError, match="exceeded quota"):
                session.scale(3)
            assert session.map(abs, [-1, -2, -3], progress=False) == [1, 2, 3]
            wait_for(lambda: session.launcher.n == 2, 30, "the Job back at 2 engines")
        finally:
            session.stop()
        wait_for(lambda: leftovers(k8s_cluster, tenant.namespace) == NOTHING, 60,
                 "no kubemagic objects after stop")


def test_max_engines_names_the_limit_and_its_file(k8s_cluster, site_config):
    (site_config / "kubemagic_config.py").write_text(
        "c.Kubemagic.max_engines = 2\nc.Kubemagic.cpu = '100m'\n")
    tenant = make_tenant(k8s_cluster, "limit")
    with clean_process_env():
        with pytest.raises(UsageError) as e:
            new_session(k8s_cluster, tenant, n=5)
        assert "at most 2" in str(e.value)
        assert str(site_config / "kubemagic_config.py") in str(e.value)
        session = new_session(k8s_cluster, tenant, n=1).start()
        try:
            with pytest.raises(UsageError, match="at most 2"):
                session.scale(4)
            pods = k8s_cluster.run_kubectl(
                "get", "pods", "-n", tenant.namespace, "-l", "app.kubernetes.io/name=kubemagic",
                "-o", "jsonpath={.items[*].spec.containers[0].resources.requests.cpu}").stdout
            assert pods.split() == ["100m"], pods  # the admin's default pod resources
        finally:
            session.stop()
    assert leftovers(k8s_cluster, tenant.namespace) == NOTHING
