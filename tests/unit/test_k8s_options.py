"""Kubernetes backend options: every bad value is one UsageError naming the flag and a fix."""

from __future__ import annotations

import pytest

from kubemagic.errors import UsageError
from kubemagic.k8s.options import parse_options, parse_tolerations
from kubemagic.k8s.quantities import cpu_quantity, gpu_count, memory_quantity


@pytest.mark.parametrize("value", ["1", "0.5", "500m", "2", 4, 0.25, "16"])
def test_cpu_quantities_accepted(value):
    assert cpu_quantity(value) == str(value)


@pytest.mark.parametrize("value", ["many", "", "1Gi", "2k", "-1", "0", "0m", "1.5.2", "1e3"])
def test_cpu_quantities_rejected_with_fix(value):
    with pytest.raises(UsageError) as e:
        cpu_quantity(value)
    assert "--cpu" in e.value.message and e.value.fix


@pytest.mark.parametrize("value", ["512Mi", "2Gi", "1G", "500M", "1e9", "1073741824", "1.5Gi"])
def test_memory_quantities_accepted(value):
    assert memory_quantity(value) == value


@pytest.mark.parametrize("value", ["1XB", "2GB", "lots", "2", "512k", "100m", "-1Gi", ""])
def test_memory_quantities_rejected_with_fix(value):
    with pytest.raises(UsageError) as e:
        memory_quantity(value)
    assert "--memory" in e.value.message and "512Mi" in e.value.fix


def test_memory_gb_suggests_kubernetes_spelling():
    with pytest.raises(UsageError, match=r"2Gi or 2G, not 2GB"):
        memory_quantity("2GB")


@pytest.mark.parametrize("value,expected", [(None, 0), ("", 0), ("1", 1), (2, 2)])
def test_gpu_counts(value, expected):
    assert gpu_count(value) == expected


@pytest.mark.parametrize("value", ["one", "0.5", "-1"])
def test_gpu_rejected(value):
    with pytest.raises(UsageError, match="--gpu"):
        gpu_count(value)


def test_defaults():
    o = parse_options()
    assert o.curve is True
    assert o.port_range == (29100, 29199)
    assert o.run_as_user == 1000
    assert o.image is None and o.namespace is None


def test_flag_strings_are_parsed():
    o = parse_options(
        node_selector="disk=ssd, zone=a",
        env="OMP_NUM_THREADS=1,MODE=fast",
        tolerations="gpu=true:NoSchedule,spot",
        pod_overrides='{"priorityClassName": "low"}',
        gpu="1",
        curve="false",
        image_pull_policy="never",
        active_deadline_seconds="3600",
        port_range="48000-48050",
    )
    assert o.node_selector == {"disk": "ssd", "zone": "a"}
    assert o.env == {"OMP_NUM_THREADS": "1", "MODE": "fast"}
    assert o.tolerations == [
        {"key": "gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Exists"},
    ]
    assert o.pod_overrides == {"priorityClassName": "low"}
    assert (o.gpu, o.curve, o.image_pull_policy) == (1, False, "Never")
    assert o.active_deadline_seconds == 3600
    assert o.port_range == (48000, 48050)


def test_structured_values_pass_through():
    tol = [{"key": "a", "operator": "Exists"}]
    o = parse_options(node_selector={"a": "b"}, tolerations=tol, env={"X": 1})
    assert o.node_selector == {"a": "b"} and o.tolerations == tol and o.env == {"X": "1"}


def test_run_as_user_none_keeps_image_user():
    assert parse_options(run_as_user=None).run_as_user is None


@pytest.mark.parametrize(
    "options,flag",
    [
        ({"memory": "1XB"}, "--memory"),
        ({"cpu": "many"}, "--cpu"),
        ({"namespace": "Not_Valid"}, "--namespace"),
        ({"image": "has space"}, "--image"),
        ({"image_pull_policy": "sometimes"}, "--image-pull-policy"),
        ({"node_selector": "novalue"}, "--node-selector"),
        ({"env": "1BAD=x"}, "--env"),
        ({"tolerations": "key:Sometimes"}, "--tolerations"),
        ({"tolerations": "[not json"}, "--tolerations"),
        ({"pod_overrides": {"spec": {}}}, "--pod-overrides"),
        ({"pod_overrides": "{bad"}, "--pod-overrides"),
        ({"port_range": "47100-47105"}, "--port-range"),
        ({"port_range": "80-200"}, "--port-range"),
        ({"port_range": "abc"}, "--port-range"),
        ({"controller_address": "tcp://1.2.3.4"}, "--controller-address"),
        ({"curve": "maybe"}, "--curve"),
        ({"active_deadline_seconds": -5}, "--active-deadline-seconds"),
        ({"start_timeout": 0}, "--start-timeout"),
        ({"run_as_user": 0}, "run_as_user"),
        ({"gpu": "x"}, "--gpu"),
    ],
)
def test_each_bad_option_is_one_clear_error(options, flag):
    with pytest.raises(UsageError) as e:
        parse_options(**options)
    assert flag in e.value.message
    assert e.value.fix


def test_unknown_option_lists_valid_ones():
    with pytest.raises(UsageError, match="unknown Kubernetes option.*imgae") as e:
        parse_options(imgae="x")
    assert "image" in e.value.fix


def test_tolerations_json_list():
    assert parse_tolerations('[{"key": "k", "operator": "Exists"}]') == [
        {"key": "k", "operator": "Exists"}
    ]
