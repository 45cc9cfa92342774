"""Pure manifest builders: the policy decisions of the Kubernetes backend, checked as data."""

from __future__ import annotations

import json

import kubernetes.client as k8s
import pytest

from kubemagic.k8s import manifests as m
from kubemagic.k8s import rbac
from kubemagic.k8s.role import role as role_of


def _job(**overrides):
    kwargs = dict(
        name="kubemagic-c1-s1",
        namespace="ns",
        labels=m.engine_labels("c1", "alice", "s1"),
        image="img:1",
        command=["python", "-m", "kubemagic.k8s.engine"],
        args=["--IPEngine.max_heartbeat_misses=10"],
        n=3,
        secret_name="kubemagic-c1-s1",
    )
    kwargs.update(overrides)
    return m.engine_job(**kwargs)


def _container(job):
    return job["spec"]["template"]["spec"]["containers"][0]


def test_job_is_a_valid_kubernetes_job():
    job = _job(
        cpu="1",
        memory="1Gi",
        gpu=1,
        node_selector={"a": "b"},
        tolerations=[{"key": "k", "operator": "Exists"}],
        active_deadline_seconds=60,
        owner=m.owner_reference("v1", "Pod", "jupyter-alice", "uid-1"),
        service_account="engines",
        image_pull_policy="IfNotPresent",
    )
    model = k8s.V1Job.model_validate(job)  # the client's schema: no unknown or mistyped field
    assert k8s.ApiClient().sanitize_for_serialization(model) == job


def test_indexed_elastic_job_shape():
    spec = _job()["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 3
    assert spec["ttlSecondsAfterFinished"] == 0
    assert spec["backoffLimitPerIndex"] >= 100 and spec["backoffLimit"] >= 10**6
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] == 30
    assert "activeDeadlineSeconds" not in spec
    assert _job(active_deadline_seconds=99)["spec"]["activeDeadlineSeconds"] == 99
    # the lease is the first deadline, never past the user's own
    assert _job(lease_seconds=120)["spec"]["activeDeadlineSeconds"] == 120
    assert _job(lease_seconds=120, active_deadline_seconds=99)["spec"][
        "activeDeadlineSeconds"] == 99


def test_pod_failure_policy_fails_on_controller_loss_and_ignores_disruptions():
    rules = _job()["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {
            "containerName": "engine",
            "operator": "In",
            "values": [m.EXIT_CONTROLLER_GONE],
        },
    }
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]} in rules
    ignored_codes = [
        r["onExitCodes"]["values"] for r in rules if r["action"] == "Ignore" and "onExitCodes" in r
    ]
    assert ignored_codes == [[m.EXIT_TERMINATED]]
    # exit 1 (any crash) must never fail the whole Job
    assert all(1 not in r.get("onExitCodes", {}).get("values", []) for r in rules)
    assert m.EXIT_CONTROLLER_GONE not in (0, 1, 255, m.EXIT_TERMINATED)


def test_labels_and_no_singleuser_labels():
    job = _job()
    for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert labels[m.LABEL_NAME] == "kubemagic"
        assert labels[m.LABEL_INSTANCE] == "c1"
        assert labels[m.LABEL_COMPONENT] == "engine"
        assert labels[m.LABEL_OWNER] == "alice"
        assert "component" not in labels
        assert not any(k.startswith("hub.jupyter.org/") for k in labels)


def test_connection_info_only_by_secret_reference():
    job = _job(env={"A": "1"})
    env = _container(job)["env"]
    conn = [e for e in env if e["name"] == m.SECRET_KEY]
    assert conn == [
        {
            "name": m.SECRET_KEY,
            "valueFrom": {"secretKeyRef": {"name": "kubemagic-c1-s1", "key": m.SECRET_KEY}},
        }
    ]
    assert {"name": "A", "value": "1"} in env


def test_engine_index_from_completion_index_annotation():
    env = {e["name"]: e for e in _container(_job())["env"]}
    assert env[m.INDEX_ENV]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )
    assert env[m.POD_NAME_ENV]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_reserved_env_names_refused():
    with pytest.raises(ValueError, match=m.SECRET_KEY):
        _job(env={m.SECRET_KEY: "literal"})


def test_user_env_may_override_ipythondir():
    env = _container(_job(env={"IPYTHONDIR": "/data/ipy"}))["env"]
    assert [e for e in env if e["name"] == "IPYTHONDIR"] == [
        {"name": "IPYTHONDIR", "value": "/data/ipy"}
    ]


def test_command_honours_engine_args():
    c = _container(_job())
    assert c["command"] == ["python", "-m", "kubemagic.k8s.engine"]
    assert c["args"] == ["--IPEngine.max_heartbeat_misses=10"]
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_resources():
    c = _container(_job(cpu="500m", memory="2Gi", gpu=2))
    assert c["resources"] == {
        "requests": {"cpu": "500m", "memory": "2Gi"},
        "limits": {"memory": "2Gi", "nvidia.com/gpu": "2"},
    }
    assert "resources" not in _container(_job())


def test_security_context_non_root_by_default_and_optional():
    pod = _job()["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["automountServiceAccountToken"] is False
    assert _container(_job())["securityContext"]["allowPrivilegeEscalation"] is False
    root_ok = _job(run_as_user=None)["spec"]["template"]["spec"]["securityContext"]
    assert "runAsUser" not in root_ok and "runAsNonRoot" not in root_ok


def test_chosen_service_account_gets_its_token():
    pod = _job(service_account="engines")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "engines"
    assert pod["automountServiceAccountToken"] is True


def test_owner_reference_only_when_given():
    assert "ownerReferences" not in _job()["metadata"]
    owner = m.owner_reference("v1", "Pod", "jupyter-alice", "uid-1")
    assert _job(owner=owner)["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": "jupyter-alice", "uid": "uid-1"}
    ]


def test_pod_overrides_merge_last_by_name():
    job = _job(
        memory="1Gi",
        pod_overrides={
            "priorityClassName": "low",
            "metadata": {"annotations": {"sidecar.istio.io/inject": "false"}},
            "containers": [
                {
                    "name": "engine",
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    "resources": {"limits": {"memory": "3Gi"}},
                },
                {"name": "sidecar", "image": "busybox"},
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    )
    template = job["spec"]["template"]
    pod = template["spec"]
    assert pod["priorityClassName"] == "low"
    assert template["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    assert template["metadata"]["labels"][m.LABEL_NAME] == "kubemagic"
    engine, sidecar = pod["containers"]
    assert engine["image"] == "img:1" and engine["volumeMounts"][0]["mountPath"] == "/data"
    assert engine["resources"]["limits"]["memory"] == "3Gi"
    assert engine["resources"]["requests"]["memory"] == "1Gi"
    assert sidecar == {"name": "sidecar", "image": "busybox"}
    assert "metadata" not in pod


def test_deep_merge_replaces_plain_lists_and_values():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": "x"}
    assert m.deep_merge(base, {"a": {"c": [3]}, "d": "y"}) == {"a": {"b": 1, "c": [3]}, "d": "y"}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": "x"}  # inputs untouched


def test_secret_holds_connection_info():
    info = json.dumps({"key": "s3cret", "curve_serverkey": "pub"})
    secret = m.connection_secret("kubemagic-x", "ns", {"l": "v"}, info)
    assert secret["stringData"] == {m.SECRET_KEY: info}
    assert secret["metadata"]["labels"] == {"l": "v"}
    k8s.V1Secret.model_validate(secret)


def test_secret_owned_by_job():
    patch = m.secret_owner_patch("kubemagic-x", "job-uid")
    assert patch["metadata"]["ownerReferences"] == [
        {"apiVersion": "batch/v1", "kind": "Job", "name": "kubemagic-x", "uid": "job-uid"}
    ]


def test_scale_patch_changes_parallelism_and_completions_together():
    assert m.scale_patch(4) == {"spec": {"suspend": False, "parallelism": 4, "completions": 4}}
    # not suspend: a suspended Job's activeDeadlineSeconds clock (the lease) would stop
    assert m.scale_patch(0) == {"spec": {"parallelism": 0}}


@pytest.mark.parametrize(
    "value,expected",
    [
        ("alice", "alice"),
        ("alice@example.com", "alice-example.com"),
        ("-x-", "x"),
        ("", "unknown"),
        ("a" * 80, "a" * 63),
    ],
)
def test_label_values_sanitized(value, expected):
    assert m.sanitize_label_value(value) == expected


def test_job_names_are_dns_labels_and_unique():
    name = m.job_name("km-1234abcd", "1732230000")
    assert name == "kubemagic-km-1234abcd-1732230000"
    long_a = m.job_name("A" * 80, "1")
    long_b = m.job_name("A" * 79 + "B", "1")
    for n in (long_a, long_b, m.job_name("Weird_ID!", "")):
        assert len(n) <= 52 and n == n.lower() and n[0].isalnum() and n[-1].isalnum()
    assert long_a != long_b


def test_network_policy_opens_only_the_port_range_to_engines():
    policy = rbac.engines_network_policy("ns", (47100, 47199))
    k8s.V1NetworkPolicy.model_validate(policy)
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    assert spec["podSelector"] == {"matchLabels": {"component": "singleuser-server"}}
    (rule,) = spec["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": m.ENGINE_POD_SELECTOR}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 47100, "endPort": 47199}]


def test_role_is_least_privilege():
    role = role_of("kubemagic", "ns")
    k8s.V1Role.model_validate(role)
    verbs = {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    assert ("", "secrets", "get") not in verbs and ("", "secrets", "list") not in verbs
    assert not any("*" in x for t in verbs for x in t)
    assert ("batch", "jobs", "create") in verbs and ("", "pods/log", "get") in verbs
    binding = rbac.role_binding("kubemagic", "ns", "sa", "other")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "sa", "namespace": "other"}]
    k8s.V1RoleBinding.model_validate(binding)
