"""kubemagic.k8s.netpol: naming the NetworkPolicy that keeps engines from the controller."""

from __future__ import annotations

from kubemagic.k8s.netpol import Endpoint, blocking, explain_block, selects

ENGINE = {"app.kubernetes.io/name": "kubemagic", "app.kubernetes.io/component": "engine"}
NOTEBOOK = {"component": "singleuser-server", "hub.jupyter.org/username": "alice"}


def policy(name, selector, types, ingress=None, egress=None):
    spec = {"podSelector": selector, "policyTypes": types}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    return {"metadata": {"name": name}, "spec": spec}


SINGLEUSER = policy("singleuser", {"matchLabels": {"component": "singleuser-server"}},
                    ["Ingress"], ingress=[{"from": [{"ipBlock": {"cidr": "10.88.0.1/32"}}],
                                           "ports": [{"port": 8888}]}])
GUIDE_RULE = policy("kubemagic-engines-to-controller",
                    {"matchLabels": {"component": "singleuser-server"}}, ["Ingress"],
                    ingress=[{"from": [{"podSelector": {"matchLabels": ENGINE}}],
                              "ports": [{"protocol": "TCP", "port": 29100, "endPort": 29199}]}])
ENGINE_EGRESS = policy("kubemagic-engines", {"matchLabels": ENGINE}, ["Ingress", "Egress"],
                       ingress=[], egress=[{"to": [{"podSelector": {
                           "matchLabels": {"component": "singleuser-server"}}}],
                           "ports": [{"port": 29100, "endPort": 29199}]}])

engine = Endpoint(ENGINE, "10.88.0.20")
kernel = Endpoint(NOTEBOOK, "10.88.0.10")


def test_selectors():
    assert selects({}, {"a": "b"})
    assert selects({"matchExpressions": [{"key": "a", "operator": "In", "values": ["b"]}]},
                   {"a": "b"})
    assert not selects({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]},
                       {"a": "b"})


def test_singleuser_policy_alone_blocks_and_is_named():
    assert blocking([SINGLEUSER], "Ingress", kernel, engine, 29100) == ["singleuser"]
    text = explain_block([SINGLEUSER], engine, kernel, 29100)
    assert "NetworkPolicy singleuser isolates the kernel's pod for ingress" in text


def test_the_guides_rule_admits_engines_policies_add_up():
    assert explain_block([SINGLEUSER, GUIDE_RULE], engine, kernel, 29150) is None
    assert explain_block([SINGLEUSER, GUIDE_RULE], engine, kernel, 29200)  # outside the range


def test_engine_egress_policy_admits_only_the_controller():
    assert explain_block([SINGLEUSER, GUIDE_RULE, ENGINE_EGRESS], engine, kernel, 29100) is None
    other = Endpoint({"component": "something-else"}, "10.88.0.30")
    assert blocking([ENGINE_EGRESS], "Egress", engine, other, 29100) == ["kubemagic-engines"]
    api_server = Endpoint(None, "10.88.0.1")
    assert blocking([ENGINE_EGRESS], "Egress", engine, api_server, 6443) == ["kubemagic-engines"]


def test_unselected_pods_are_not_isolated():
    assert explain_block([ENGINE_EGRESS], Endpoint({"x": "y"}, "1.2.3.4"), kernel, 29100) is None
