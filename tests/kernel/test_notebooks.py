"""Every notebook in notebooks/ runs top to bottom in a real kernel (nbclient), and its
outputs hold the right values — not only "no error".

The kernel is the ``python3`` kernel spec of this interpreter's environment (installed
into ``sys.prefix`` by a session fixture, so the notebooks run with the .venv's kubemagic).
``kubernetes.ipynb`` runs against the real test cluster (``k8s_cluster`` fixture).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
KERNEL = "python3"
ALL = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))


@pytest.fixture(scope="session")
def kernel_spec() -> str:
    """Install this environment's ipykernel as ``python3`` into sys.prefix (idempotent)."""
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", KERNEL],
                   check=True, capture_output=True, text=True)
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(KERNEL)
    python = Path(spec.argv[0])
    assert python.resolve() == Path(sys.executable).resolve() or spec.argv[0] == "python", (
        f"kernel spec {KERNEL!r} runs {spec.argv[0]}, not this environment's {sys.executable}")
    return KERNEL


def run_notebook(name: str, tmp_path: Path, env: dict[str, str] | None = None,
                 timeout: int = 300) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(nb, kernel_name=KERNEL, timeout=timeout, allow_errors=False,
                            resources={"metadata": {"path": str(tmp_path)}})
    kernel_env = dict(os.environ)
    kernel_env.update(env or {})
    try:
        client.execute(env=kernel_env)
    finally:  # the executed copy, also of a failed run, for diagnosis
        (tmp_path / name).write_text(nbformat.writes(nb))
    return nb


def cell(nb: nbformat.NotebookNode, marker: str) -> nbformat.NotebookNode:
    """The one code cell whose source contains ``marker``."""
    found = [c for c in nb.cells if c.cell_type == "code" and marker in c.source]
    assert len(found) == 1, f"{len(found)} cells contain {marker!r}"
    return found[0]


def text(c: nbformat.NotebookNode) -> str:
    """Everything a cell printed or displayed as plain text."""
    parts = []
    for o in c.get("outputs", []):
        if o.output_type == "stream":
            parts.append(o.text)
        elif o.output_type in ("execute_result", "display_data"):
            parts.append(o.get("data", {}).get("text/plain", ""))
        elif o.output_type == "error":
            parts.append(f"{o.ename}: {o.evalue}")
    return "".join(parts)


def result(c: nbformat.NotebookNode) -> str:
    """The cell's value (its Out[] text)."""
    outs = [o for o in c.get("outputs", []) if o.output_type == "execute_result"]
    assert len(outs) == 1, c.get("outputs")
    return outs[0]["data"]["text/plain"]


def widget_models(nb: nbformat.NotebookNode) -> list[dict[str, Any]]:
    """The widget models nbclient saved with the executed notebook."""
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    return [m["state"] for m in state.get("state", {}).values()]


def test_every_notebook_is_tested():
    tested = {"quickstart.ipynb", "kubernetes.ipynb", "data-and-imports.ipynb",
              "scaling-and-failures.ipynb"}
    assert set(ALL) == tested, f"notebooks without a test: {set(ALL) - tested}"
    for name in ALL:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
            f"{name} is committed with outputs; clear them")


def test_quickstart(kernel_spec, tmp_path):
    nb = run_notebook("quickstart.ipynb", tmp_path)
    out = text(cell(nb, "print(len(results)"))
    assert "20 results" in out
    assert "same as computing them here: True" in out
    assert "[21065.833, 59605.912, 109516.918]" in out  # score(0..2), computed on engines
    status = text(cell(nb, "%kubemap status"))
    assert "local backend, running, 2/2 engines ready" in status
    assert "last map: 20/20 items, done" in status
    assert result(cell(nb, "cluster.map(lambda")) == str([x * x for x in range(10)])
    assert "engines and controller stopped" in text(cell(nb, "%kubemap stop"))
    # the widget the %%kubemap cell displayed, as saved at the end of the notebook: it
    # followed the session to the end (stopped after `%kubemap stop`), and its progress bar
    # is full for the last map (the 10 squares of the Python-API cell)
    models = widget_models(nb)
    titles = [m.get("value", "") for m in models if "kubemagic-ready" in str(m.get("value", ""))]
    assert titles and all("local · stopped" in t for t in titles), titles
    assert all("<span class='kubemagic-requested'>2</span>" in t for t in titles), titles
    bars = [m for m in models if m.get("_model_name") == "IntProgressModel"
            and m.get("description") == "progress"]
    assert bars and bars[0]["value"] == bars[0]["max"] == 10, bars
    labels = [m.get("value", "") for m in models if "items/s" in str(m.get("value", ""))]
    assert any(t.startswith("10/10 items") and "done in" in t for t in labels), labels


def test_data_and_imports(kernel_spec, tmp_path):
    nb = run_notebook("data-and-imports.ipynb", tmp_path)
    assert "[1.875, 1.875, 2.5, 0.625]" in text(cell(nb, "bills = cluster.map"))
    assert "[True, True, True, False]" in text(cell(nb, "print(flags)"))
    scaled = text(cell(nb, "%kubemap scale 3"))
    assert "new engine(s): [" in scaled
    # the engine that joined after the pushes and imports has them all
    probe = text(cell(nb, "view.pull('probe'"))
    assert "(['apple', 'pear', 'plum'], 1.25, 1.0, 2.5, '1/2', True, True)" in probe
    status = text(cell(nb, "%kubemap status"))
    assert "3/3 engines ready" in status
    assert "pushed prices (0.0 MB), tax (0.0 MB), threshold (0.0 MB)" in status


def test_scaling_and_failures(kernel_spec, tmp_path):
    nb = run_notebook("scaling-and-failures.ipynb", tmp_path)
    assert "4 engines" in text(cell(nb, "%kubemap scale 4"))
    assert "2 engines" in text(cell(nb, "%kubemap scale 2\n"))
    assert "3 engines after the click" in text(cell(nb, "widget.scale_button.click()"))
    killed = text(cell(nb, "os.kill(victim"))
    assert "killed engine" in killed
    out = text(cell(nb, "values = [v for v, _ in results]"))
    assert "120 results;" in out and "every item exactly once: True" in out
    retried = int(out.split("120 results;")[1].split("chunk")[0])
    assert retried >= 1
    final = text(cell(nb, "engines again"))
    assert "3 engines again: the lost one was replaced" in final


@pytest.mark.cluster
def test_kubernetes(kernel_spec, k8s_cluster, tmp_path):
    from kubernetes import client

    from tests.k8s.helpers import make_tenant

    # the notebook runs as a user would: the least-privilege account of `kubemagic rbac`
    tenant = make_tenant(k8s_cluster, "nb-kubernetes")
    namespace = tenant.namespace
    env = {
        "KUBECONFIG": tenant.kubeconfig,
        "KUBEMAGIC_TEST_IMAGE": k8s_cluster.image,
        "KUBEMAGIC_TEST_NAMESPACE": namespace,
        "KUBEMAGIC_TEST_HOST_IP": k8s_cluster.host_ip,
    }
    nb = run_notebook("kubernetes.ipynb", tmp_path, env=env, timeout=400)
    assert f"namespace {namespace}" in text(cell(nb, "IMAGE = os.environ"))
    out = text(cell(nb, "items per pod"))
    assert "all 40 results correct" in out
    pods = json.loads(out.split("items per pod:")[1].splitlines()[0].strip().replace("'", '"'))
    assert sum(pods.values()) == 40
    assert all(p.startswith("kubemagic-") for p in pods), pods  # engines ran in the Job's pods
    assert "3/3 engines ready" in text(cell(nb, "%kubemap status"))
    used = text(cell(nb, "pods used now"))
    assert "pods used now: ['kubemagic-" in used
    # %kubemap stop removed the Job (and with it the pods)
    batch = client.BatchV1Api(k8s_cluster.api)
    deadline = time.monotonic() + 60
    while True:
        jobs = batch.list_namespaced_job(namespace, label_selector="app.kubernetes.io/name=kubemagic")
        if not jobs.items or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not jobs.items, [j.metadata.name for j in jobs.items]


def test_binder_installs_kubemagic_for_the_notebooks(tmp_path):
    """binder/requirements.txt, resolved the way repo2docker runs it (from the repo root),
    installs kubemagic with everything the notebooks import."""
    report = tmp_path / "report.json"
    res = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--report", str(report), "-r", "binder/requirements.txt"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    names = {i["metadata"]["name"].lower() for i in json.loads(report.read_text())["install"]}
    assert {"kubemagic", "ipyparallel", "ipywidgets", "ipykernel"} <= names, names
    post_build = (REPO / "binder" / "postBuild").read_text()
    assert os.access(REPO / "binder" / "postBuild", os.X_OK)
    assert "ipykernel install" in post_build
    # the notebooks binder users can run without a cluster say so
    for name in ("quickstart.ipynb", "data-and-imports.ipynb", "scaling-and-failures.ipynb"):
        assert "--backend local" in (NOTEBOOKS / name).read_text()
