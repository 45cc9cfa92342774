"""The `kubemagic` command without a cluster: demo on real local engines, rbac, usage.

The cluster half (doctor, ls, clean against the real test cluster) is tests/test_cli_cluster.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from kubemagic import cli

REPO = Path(__file__).resolve().parents[1]


def kubemagic(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m kubemagic ARGS`` as a user would."""
    return subprocess.run([sys.executable, "-m", "kubemagic", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=REPO)


def test_demo_runs_a_real_map_on_local_engines():
    res = kubemagic("demo", "--items", "120", "--engines", "2")
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "2 local engine(s), 120 items" in out
    start = float(re.search(r"start-up\s+([\d.]+) s\s+2/2 engines ready \(local backend\)", out)[1])
    map_s = float(re.search(r"map\s+([\d.]+) s\s+([\d,]+) items/s", out)[1])
    assert 0 < start < 60 and 0 < map_s < 120
    # the result is the real one: the longest Collatz chain below 120,000 starts at 106,239
    assert "longest chain below 120,000 starts at 106,239: 353 steps" in out
    assert "re-computed locally: identical" in out
    assert re.search(r"stop\s+[\d.]+ s", out)


def test_console_script_and_module_agree():
    script = Path(sys.executable).with_name("kubemagic")
    assert script.exists(), "the kubemagic console script is not installed (pip install -e .)"
    a = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    b = kubemagic("--help")
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout
    for command in ("demo", "rbac", "doctor", "ls", "clean"):
        assert command in a.stdout


def test_collatz_block_is_correct():
    # chain of 27 has 111 steps, the longest below 100
    assert cli.collatz_block(0) == (871, 178)


def test_rbac_delegates_to_the_backend_renderer():
    from kubemagic.k8s.rbac import render_rbac

    res = kubemagic("rbac", "--namespace", "team-a", "--service-account", "jupyter-alice")
    assert res.returncode == 0, res.stderr
    assert res.stdout == render_rbac("team-a", "jupyter-alice")
    docs = [d for d in yaml.safe_load_all(res.stdout) if d]
    kinds = [d["kind"] for d in docs]
    assert kinds == ["ServiceAccount", "Role", "RoleBinding", "NetworkPolicy"]
    assert all(d["metadata"]["namespace"] == "team-a" for d in docs)
    no_np = kubemagic("rbac", "--namespace", "team-a", "--no-network-policy")
    assert "NetworkPolicy" not in no_np.stdout


def test_usage_errors_exit_2():
    for args in (["demo", "--engines", "0"], ["demo", "--items", "x"], ["nonsense"],
                 ["clean", "--bogus"]):
        res = kubemagic(*args)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert "usage:" in res.stderr
    res = kubemagic()
    assert res.returncode == 2 and "demo" in res.stdout


def test_doctor_without_any_cluster_fails_with_advice(tmp_path):
    missing = tmp_path / "no-such-kubeconfig"
    res = kubemagic("doctor", "--kubeconfig", str(missing), "--image", "x", timeout=60)
    assert res.returncode == 1
    assert re.search(r"^FAIL\s+API reachable", res.stdout, re.M), res.stdout
    assert re.search(r"^SKIP\s+permissions\s+needs the API", res.stdout, re.M)
    assert "how to fix:" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr


def test_doctor_with_an_unreachable_api_server(tmp_path):
    # a kubeconfig pointing at a port on this machine where nothing listens
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:{port}', "
        "insecure-skip-tls-verify: true}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: x, context: {cluster: c, user: u, namespace: ns1}}]\n"
        "current-context: x\n")
    res = kubemagic("doctor", "--kubeconfig", str(cfg), "--image", "x", timeout=120)
    assert res.returncode == 1
    assert re.search(rf"^FAIL\s+API reachable\s+cannot reach https://127.0.0.1:{port}", res.stdout, re.M)
    assert "namespace ns1" in res.stdout  # the context's namespace was picked up
    assert "check the cluster is up" in res.stdout


def test_ls_and_clean_without_a_cluster_say_what_to_do(tmp_path):
    for cmd in ("ls", "clean"):
        res = kubemagic(cmd, "--kubeconfig", str(tmp_path / "none"))
        assert res.returncode == 1
        assert "how to fix" in res.stderr and "Traceback" not in res.stderr


def test_demo_takes_the_engine_options_of_the_magic():
    """The demo's engine flags are the backends' declared options, checked the same way."""
    from kubemagic.backends.options import option_flags

    help_text = kubemagic("demo", "--help").stdout
    assert all(flag.args[0] in help_text for flag in option_flags())
    res = kubemagic("demo", "--items", "1", "--backend", "local", "--node-selector", "gpu=true")
    assert res.returncode == 1
    assert ("--node-selector only apply to engines on Kubernetes, but the backend is local"
            in res.stderr)
