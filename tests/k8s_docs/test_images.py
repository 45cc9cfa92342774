"""images/: the engine image recipe, and the test cluster's image built from the same requirements.

No Docker daemon here, so the Dockerfile is checked by replaying what it does: its COPY
sources, laid out as in the image, build and install kubemagic (with the engine entry point);
its base is a Jupyter docker-stacks image. The test cluster's image is checked from the
inside: every dependency pyproject.toml declares (and numpy) is installed there at a
satisfying version.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "images" / "Dockerfile"


def requirements() -> list[str]:
    lines = (REPO / "images" / "requirements.txt").read_text().splitlines()
    return [l.strip() for l in lines if l.strip() and not l.startswith("#")]


def image_requirements() -> list[str]:
    """What the engine image must contain: pyproject's dependencies + the extras listed."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return list(deps) + [r for r in requirements() if r != "."]


def test_dockerfile_is_docker_stacks_plus_kubemagic():
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.M)[1]
    assert base.startswith("quay.io/jupyter/") and "notebook" in base
    assert re.search(r"^FROM \$\{BASE_IMAGE\}", text, re.M)
    assert "pip install --no-cache-dir -r images/requirements.txt" in text
    assert requirements()[0] == "."  # the repository itself: pyproject's dependencies


def test_dockerfile_context_builds_kubemagic(tmp_path):
    """Lay out the COPY sources like the Dockerfile does, then build the wheel from them."""
    text = DOCKERFILE.read_text()
    ctx = tmp_path / "kubemagic-src"
    for sources, dest in re.findall(r"^COPY --chown=\S+ (.+) (\S+)$", text, re.M):
        for src in sources.split():
            matches = sorted(REPO.glob(src))
            assert matches, f"COPY source {src} matches nothing"
            for m in matches:
                target = Path(dest.replace("/tmp/kubemagic-src", str(ctx)))
                if dest.endswith("/"):
                    target = target / m.name
                target.parent.mkdir(parents=True, exist_ok=True)
                if m.is_dir():
                    subprocess.run(["cp", "-r", str(m), str(target)], check=True)
                else:
                    target.write_bytes(m.read_bytes())
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                          "-w", str(tmp_path / "dist"), "."], cwd=ctx, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    wheel = next((tmp_path / "dist").glob("kubemagic-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("kubemagic/k8s/engine.py", "kubemagic/remote.py", "kubemagic/cli.py"):
        assert module in names, module


@pytest.mark.cluster
def test_test_cluster_image_has_the_same_requirements(k8s_cluster):
    from kubernetes import client

    ns = k8s_cluster.create_namespace("image-reqs")
    reqs = image_requirements()
    script = (
        "import json, sys\n"
        "from importlib import metadata\n"
        "from packaging.requirements import Requirement\n"
        "out = {}\n"
        "for line in sys.argv[1:]:\n"
        "    r = Requirement(line)\n"
        "    try:\n"
        "        v = metadata.version(r.name)\n"
        "        out[line] = [v, r.specifier.contains(v, prereleases=True)]\n"
        "    except metadata.PackageNotFoundError:\n"
        "        out[line] = [None, False]\n"
        "import kubemagic\n"
        "out['kubemagic'] = [kubemagic.__version__, True]\n"
        "print(json.dumps(out))\n"
    )
    core = client.CoreV1Api(k8s_cluster.api)
    core.create_namespaced_pod(ns, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "reqs"},
        "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                 "securityContext": {"runAsUser": 1000, "runAsNonRoot": True},
                 "containers": [{"name": "c", "image": k8s_cluster.image,
                                 "command": ["python", "-c", script, *reqs]}]}})
    deadline = time.monotonic() + 180
    while core.read_namespaced_pod("reqs", ns).status.phase not in ("Succeeded", "Failed"):
        assert time.monotonic() < deadline, "the requirements pod did not finish"
        time.sleep(0.5)
    log = core.read_namespaced_pod_log("reqs", ns)
    found = json.loads(log.strip().splitlines()[-1])
    missing = {r: v for r, v in found.items() if not v[1]}
    assert not missing, f"the test image {k8s_cluster.image} lacks or mismatches: {missing}"
    assert set(found) == set(reqs) | {"kubemagic"}
