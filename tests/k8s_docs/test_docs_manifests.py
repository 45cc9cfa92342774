"""docs/jupyterhub.md and docs/manifests/ are what kubemagic needs, and the API server takes them.

* the manifests are exactly what `kubemagic rbac` renders (no drift from the code);
* every YAML block of the guide parses; the manifest blocks equal the files; the Helm values
  (docs/manifests/z2jh-values.yaml, embedded verbatim in the guide: tests/hub's JupyterHub reads
  the same file) use the variable names the backend reads and the same ingress rule as the
  NetworkPolicy; the engines' own NetworkPolicy (engine-networkpolicy.yaml, also embedded
  verbatim) admits nothing in and lets engines out only to the controller's ports and DNS;
* on the real test cluster (not a dry run): the ServiceAccount, Role, RoleBinding and
  NetworkPolicy are created in a fresh namespace, read back and deleted; the singleuser
  NetworkPolicy z2jh would render from the values (with the guide's ingress and egress rules)
  is created too; and a pod set up like a singleuser pod from the guide (service account,
  token, downward-API env, singleuser label) runs `kubemagic doctor` in-cluster: all checks pass.
"""

from __future__ import annotations

import copy
import re
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "jupyterhub.md"
MANIFESTS = REPO / "docs" / "manifests"
FILES = {"ServiceAccount": "serviceaccount.yaml", "Role": "role.yaml",
         "RoleBinding": "rolebinding.yaml", "NetworkPolicy": "networkpolicy.yaml"}
#: files the guide adds to what `kubemagic rbac` prints, embedded in the guide verbatim
VALUES_FILE, ENGINE_POLICY_FILE = "z2jh-values.yaml", "engine-networkpolicy.yaml"
DOC_NAMESPACE, DOC_SA = "jhub", "kubemagic"


def yaml_blocks() -> list:
    text = GUIDE.read_text()
    blocks = re.findall(r"^```yaml\n(.*?)^```", text, re.S | re.M)
    assert blocks, "no ```yaml blocks in docs/jupyterhub.md"
    return [yaml.safe_load(b) for b in blocks]  # raises on a block that does not parse


def manifest(kind: str) -> dict:
    return yaml.safe_load((MANIFESTS / FILES[kind]).read_text())


def helm_values() -> dict:
    values = [b for b in yaml_blocks() if isinstance(b, dict) and "singleuser" in b]
    assert len(values) == 1
    assert values[0] == yaml.safe_load((MANIFESTS / VALUES_FILE).read_text())
    return values[0]


def engine_policy() -> dict:
    return yaml.safe_load((MANIFESTS / ENGINE_POLICY_FILE).read_text())


def test_manifests_are_what_kubemagic_rbac_renders():
    from kubemagic.k8s.rbac import render_rbac

    rendered = [d for d in yaml.safe_load_all(render_rbac(DOC_NAMESPACE, DOC_SA)) if d]
    assert sorted(p.name for p in MANIFESTS.glob("*.yaml")) == sorted(
        [*FILES.values(), VALUES_FILE, ENGINE_POLICY_FILE])
    assert {d["kind"]: d for d in rendered} == {k: manifest(k) for k in FILES}, (
        "docs/manifests drifted from `kubemagic rbac --namespace jhub --service-account "
        "kubemagic`: regenerate them and the blocks in docs/jupyterhub.md")


def test_guide_blocks_parse_and_match_the_files():
    blocks = yaml_blocks()
    for kind in FILES:
        assert manifest(kind) in blocks, f"docs/jupyterhub.md lacks the {kind} of docs/manifests"


@pytest.mark.parametrize("name", [VALUES_FILE, ENGINE_POLICY_FILE])
def test_guide_embeds_the_file_verbatim(name):
    """One source: the guide shows these files character for character (comments included), and
    tests/hub's JupyterHub applies the files, so what a reader copies is what was tested."""
    text = (MANIFESTS / name).read_text()
    assert f"```yaml\n{text}```" in GUIDE.read_text(), (
        f"docs/jupyterhub.md does not embed docs/manifests/{name} verbatim in a ```yaml block")


def test_engine_policy_confines_engines():
    from kubemagic.k8s.manifests import ENGINE_POD_SELECTOR, SINGLEUSER_POD_LABELS
    from kubemagic.k8s.options import DEFAULT_PORT_RANGE

    policy = engine_policy()
    spec = policy["spec"]
    assert policy["metadata"]["namespace"] == DOC_NAMESPACE
    assert spec["podSelector"] == {"matchLabels": ENGINE_POD_SELECTOR}
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    assert not spec.get("ingress"), "engines accept no connections"
    low, high = map(int, DEFAULT_PORT_RANGE.split("-"))
    to_controller, dns = spec["egress"]
    assert to_controller == {"to": [{"podSelector": {"matchLabels": SINGLEUSER_POD_LABELS}}],
                             "ports": [{"protocol": "TCP", "port": low, "endPort": high}]}
    assert sorted((p["protocol"], p["port"]) for p in dns["ports"]) == [("TCP", 53), ("UDP", 53)]
    assert all("podSelector" not in peer for peer in dns["to"])


def test_helm_values_fit_the_backend():
    from kubemagic.k8s import incluster
    from kubemagic.k8s.manifests import ENGINE_POD_SELECTOR

    su = helm_values()["singleuser"]
    assert su["serviceAccountName"] == manifest("ServiceAccount")["metadata"]["name"]
    assert manifest("RoleBinding")["subjects"][0]["name"] == su["serviceAccountName"]
    # the same ingress rule as the standalone NetworkPolicy, selecting kubemagic's engine pods
    np_rule = manifest("NetworkPolicy")["spec"]["ingress"][0]
    assert su["networkPolicy"]["ingress"] == [np_rule]
    assert np_rule["from"][0]["podSelector"]["matchLabels"] == ENGINE_POD_SELECTOR
    from kubemagic.k8s.options import DEFAULT_PORT_RANGE

    low, high = map(int, DEFAULT_PORT_RANGE.split("-"))
    assert np_rule["ports"] == [{"protocol": "TCP", "port": low, "endPort": high}]
    # the downward-API variables are the names kubemagic reads first
    env = su["extraEnv"]
    expected = {incluster._POD_IP_VARS[0]: "status.podIP", incluster._POD_UID_VARS[0]: "metadata.uid",
                incluster._POD_NAME_VARS[0]: "metadata.name",
                incluster._POD_NAMESPACE_VARS[0]: "metadata.namespace"}
    assert {k: v["valueFrom"]["fieldRef"]["fieldPath"] for k, v in env.items()} == expected
    assert helm_values()["hub"]["config"]["KubeSpawner"]["automount_service_account_token"] is True
    assert su["networkPolicy"]["egress"][0]["to"][0]["ipBlock"]["cidr"].endswith("/32")


def _in(ns: str, doc: dict) -> dict:
    doc = copy.deepcopy(doc)
    doc["metadata"]["namespace"] = ns
    for subject in doc.get("subjects", []):
        subject["namespace"] = ns
    return doc


def _create(api, doc: dict) -> None:
    from kubernetes import utils

    utils.create_from_dict(api, doc)  # a real create: no dryRun


@pytest.mark.cluster
def test_manifests_are_accepted_by_the_api_server(k8s_cluster):
    from kubernetes import client

    ns = k8s_cluster.create_namespace("docs-manifests")
    api = k8s_cluster.api
    core, rbac, net = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api), client.NetworkingV1Api(api)
    for kind in ("ServiceAccount", "Role", "RoleBinding", "NetworkPolicy"):
        _create(api, _in(ns, manifest(kind)))
    _create(api, _in(ns, engine_policy()))
    # read back what the server stored
    assert core.read_namespaced_service_account(DOC_SA, ns).metadata.name == DOC_SA
    role = rbac.read_namespaced_role("kubemagic", ns)
    stored = [{"apiGroups": r.api_groups, "resources": r.resources, "verbs": r.verbs} for r in role.rules]
    assert stored == manifest("Role")["rules"]
    binding = rbac.read_namespaced_role_binding("kubemagic", ns)
    assert (binding.subjects[0].name, binding.subjects[0].namespace) == (DOC_SA, ns)
    policy = net.read_namespaced_network_policy("kubemagic-engines-to-controller", ns)
    port = policy.spec.ingress[0].ports[0]
    assert (port.port, port.end_port) == (29100, 29199)
    engines = net.read_namespaced_network_policy(engine_policy()["metadata"]["name"], ns)
    assert not engines.spec.ingress and engines.spec.egress[0].ports[0].end_port == 29199
    # the service account now has exactly the rights the Role grants: doctor's permission rows
    from kubemagic.k8s import doctor
    from kubemagic.k8s.client import connect

    sa_api = connect(kubeconfig=k8s_cluster.service_account_kubeconfig(ns, DOC_SA))
    assert doctor.access_allowed(sa_api, ns, "create", "batch", "jobs")[0]
    assert not doctor.access_allowed(sa_api, ns, "get", "", "secrets")[0]  # write-only Secrets
    # and they delete cleanly
    net.delete_namespaced_network_policy("kubemagic-engines-to-controller", ns)
    rbac.delete_namespaced_role_binding("kubemagic", ns)
    rbac.delete_namespaced_role("kubemagic", ns)
    core.delete_namespaced_service_account(DOC_SA, ns)
    for read in (lambda: rbac.read_namespaced_role("kubemagic", ns),
                 lambda: net.read_namespaced_network_policy("kubemagic-engines-to-controller", ns)):
        with pytest.raises(client.ApiException) as e:
            read()
        assert e.value.status == 404


@pytest.mark.cluster
def test_a_singleuser_pod_set_up_by_the_guide_passes_doctor(k8s_cluster):
    """The Helm values, rendered the way z2jh would, on the real cluster."""
    from kubernetes import client

    ns = k8s_cluster.create_namespace("docs-singleuser")
    api = k8s_cluster.api
    core = client.CoreV1Api(api)
    for kind in ("ServiceAccount", "Role", "RoleBinding", "NetworkPolicy"):
        _create(api, _in(ns, manifest(kind)))
    su = helm_values()["singleuser"]
    # z2jh's singleuser NetworkPolicy, with the guide's extra ingress and egress rules
    _create(api, {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "singleuser", "namespace": ns},
        "spec": {"podSelector": {"matchLabels": {"component": "singleuser-server"}},
                 "policyTypes": ["Ingress", "Egress"],
                 "ingress": su["networkPolicy"]["ingress"],
                 "egress": su["networkPolicy"]["egress"]},
    })
    # a pod as KubeSpawner would make it from these values
    env = [{"name": k, **v} for k, v in su["extraEnv"].items()]
    env.append({"name": "JUPYTER_IMAGE_SPEC", "value": k8s_cluster.image})  # KubeSpawner sets it
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "jupyter-alice", "namespace": ns,
                     "labels": {"component": "singleuser-server", "app": "jupyterhub"}},
        "spec": {
            "serviceAccountName": su["serviceAccountName"],
            "automountServiceAccountToken": helm_values()["hub"]["config"]["KubeSpawner"][
                "automount_service_account_token"],
            "restartPolicy": "Never",
            "securityContext": {"runAsUser": 1000, "runAsNonRoot": True},
            "containers": [{"name": "notebook", "image": k8s_cluster.image, "env": env,
                            "command": ["kubemagic", "doctor", "--timeout", "90"]}],
        },
    }
    core.create_namespaced_pod(ns, pod)
    deadline = time.monotonic() + 240
    phase = None
    while time.monotonic() < deadline:
        phase = core.read_namespaced_pod("jupyter-alice", ns).status.phase
        if phase in ("Succeeded", "Failed"):
            break
        time.sleep(1)
    log = core.read_namespaced_pod_log("jupyter-alice", ns, container="notebook")
    assert phase == "Succeeded", f"doctor in the singleuser-like pod: {phase}\n{log}"
    assert f"as system:serviceaccount:{ns}:{DOC_SA} (in-cluster service account)" in log, log
    pod_ip = core.read_namespaced_pod("jupyter-alice", ns).status.pod_ip
    assert f"pods reach {pod_ip}:29100-29199" in log, log  # the address came from KUBEMAGIC_POD_IP
    assert re.search(r"^all \d+ checks passed", log, re.M) and "FAIL " not in log, log
