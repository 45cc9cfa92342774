"""Kubernetes backend options: every bad value is one UsageError naming the flag and a fix;
every option, declared once in KubernetesOptions, is a flag of the magic and reaches the Job."""

from __future__ import annotations

import inspect
import re
from dataclasses import fields

import pytest
from IPython.core.magic_arguments import parse_argstring
from traitlets.config import Config

from kubemagic.backends.options import declared
from kubemagic.cli import build_parser
from kubemagic.errors import UsageError
from kubemagic.k8s.backend import _launcher_config
from kubemagic.k8s.launcher import KubernetesEngineSetLauncher
from kubemagic.k8s.manifests import GRACE_ENV, engine_job
from kubemagic.k8s.options import KubernetesOptions, parse_options, parse_tolerations
from kubemagic.k8s.quantities import cpu_quantity, gpu_count, memory_quantity
from kubemagic.magics import KubeMagics, line_engine_options


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
    assert parse_options(run_as_user="none").run_as_user is None  # the flag's spelling
    assert parse_options().run_as_user == 1000


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
        ({"run_as_user": 0}, "--run-as-user"),
        ({"run_as_user": "root"}, "--run-as-user"),
        ({"gpu": "x"}, "--gpu"),
    ],
)
def test_each_bad_option_is_one_clear_error(options, flag):
    with pytest.raises(UsageError) as e:
        parse_options(**options)
    assert flag in e.value.message
    assert e.value.fix


def test_unknown_option_lists_valid_ones():
    with pytest.raises(UsageError, match="unknown option.*imgae.*kubernetes backend") as e:
        parse_options(imgae="x")
    assert "did you mean image?" in e.value.fix and "node_selector" in e.value.fix


def test_tolerations_json_list():
    assert parse_tolerations('[{"key": "k", "operator": "Exists"}]') == [
        {"key": "k", "operator": "Exists"}
    ]


# -- declared once: every field is a flag, a trait or a Job field, with the same checks ----------
MAGIC_FLAGS = frozenset(KubeMagics.kubemap.parser._option_string_actions)


def _magic(line: str) -> dict:
    """The engine options the magic passes to the session for ``line``'s flags."""
    return line_engine_options(parse_argstring(KubeMagics.kubemap, line))


def _job(options: KubernetesOptions) -> dict:
    """The Job the launcher builds from the backend's launcher settings for ``options``."""
    config = Config({"KubernetesEngineSetLauncher": _launcher_config(options, "ns")})
    launcher = KubernetesEngineSetLauncher(config=config, job_name="kubemagic-t")
    launcher.n = 2
    return launcher.job_manifest(launcher.options(), "img:1")


@pytest.mark.parametrize("name", [f.name for f in fields(KubernetesOptions)])
def test_every_option_is_a_flag_of_the_magic_and_of_the_demo(name):
    flag = "--" + name.replace("_", "-")
    demo = build_parser()._subparsers._group_actions[0].choices["demo"]
    assert flag in MAGIC_FLAGS and flag in demo._option_string_actions
    opt = declared(KubernetesOptions)[name]
    assert opt.help and opt.layer in ("session", "launcher", "manifest")


def test_manifest_options_are_job_fields_and_launcher_options_are_traits():
    """Adding an option is one field plus the code that uses it: a manifest option is a
    keyword of engine_job, a launcher/manifest option a trait of the launcher."""
    job_params = inspect.signature(engine_job).parameters
    traits = KubernetesEngineSetLauncher.class_traits(config=True)
    for name, opt in declared(KubernetesOptions).items():
        if opt.layer == "manifest":
            assert name in job_params, name
        if opt.layer != "session":
            assert (opt.target or name) in traits, name


@pytest.mark.parametrize("options,flag", [
    ({"node_selector": "novalue"}, "--node-selector"),
    ({"tolerations": "key:Sometimes"}, "--tolerations"),
    ({"env": "1BAD=x"}, "--env"),
    ({"pod_overrides": "{bad"}, "--pod-overrides"),
    ({"port_range": "abc"}, "--port-range"),
    ({"curve": "maybe"}, "--curve"),
    ({"service_account": "Bad_Name"}, "--service-account"),
    ({"image_pull_policy": "sometimes"}, "--image-pull-policy"),
    ({"run_as_user": 0}, "--run-as-user"),
    ({"active_deadline_seconds": 0}, "--active-deadline-seconds"),
])
def test_error_texts_name_flags_the_magic_has(options, flag):
    with pytest.raises(UsageError) as e:
        parse_options(**options)
    named = set(re.findall(r"--[a-z][a-z-]+", str(e.value)))
    assert flag in named and named <= MAGIC_FLAGS, str(e.value)


def test_magic_numbers_and_switches_are_typed_like_the_python_api():
    assert _magic("--gpu -1 --curve --run-as-user none") == {
        "gpu": -1, "curve": True, "run_as_user": "none"}
    with pytest.raises(UsageError, match="--gpu -1 is negative"):
        parse_options(**_magic("--gpu -1"))


def test_magic_node_selector_reaches_the_job():
    given = _magic("--node-selector gpu=true --backend kubernetes")
    assert given == {"node_selector": "gpu=true"}
    spec = _job(parse_options(**given))["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"gpu": "true"}


def test_magic_flags_reach_the_job_and_the_controller():
    given = _magic("--tolerations gpu=true:NoSchedule --env OMP_NUM_THREADS=1 "
                   "--service-account runner --image-pull-policy never --run-as-user none "
                   "--active-deadline-seconds 600 --lease-seconds 0 --gpu 1 --cpu 500m --no-curve "
                   "--port-range 48000-48050 --pod-overrides '{\"priorityClassName\": \"low\"}'")
    options = parse_options(**given)
    assert options.curve is False and options.port_range == (48000, 48050)
    job = _job(options)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["tolerations"][0] == {"key": "gpu", "operator": "Equal", "value": "true",
                                     "effect": "NoSchedule"}
    assert {"name": "OMP_NUM_THREADS", "value": "1"} in container["env"]
    assert pod["serviceAccountName"] == "runner" and pod["automountServiceAccountToken"]
    assert container["imagePullPolicy"] == "Never" and pod["priorityClassName"] == "low"
    assert "runAsUser" not in pod["securityContext"]
    assert job["spec"]["activeDeadlineSeconds"] == 600  # no lease: the user's deadline
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["cpu"] == "500m"


def test_launcher_traits_take_config_file_values_and_command_line_strings():
    """Plain ipyparallel configures the same options, checked by the same parsers."""
    config = Config({"KubernetesEngineSetLauncher": {
        "namespace": "ns", "gpu": "2", "node_selector": "disk=ssd", "tolerations": [
            {"key": "spot", "operator": "Exists"}]}})
    options = KubernetesEngineSetLauncher(config=config).options()
    assert (options.gpu, options.node_selector) == (2, {"disk": "ssd"})
    assert options.tolerations == [{"key": "spot", "operator": "Exists"}]
    bad = KubernetesEngineSetLauncher(config=Config(
        {"KubernetesEngineSetLauncher": {"namespace": "ns", "memory": "1XB"}}))
    with pytest.raises(UsageError, match="--memory '1XB'"):
        bad.options()


def test_engines_spread_over_nodes_and_leave_a_lost_node_within_seconds():
    pod = _job(parse_options())["spec"]["template"]["spec"]
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"  # preferred: one node still works
    lost = {t["key"]: t["tolerationSeconds"] for t in pod["tolerations"]}
    assert lost == {"node.kubernetes.io/not-ready": 10, "node.kubernetes.io/unreachable": 10}
    pod = _job(parse_options(**_magic("--no-spread --node-loss-seconds 30")))["spec"][
        "template"]["spec"]
    assert "topologySpreadConstraints" not in pod
    assert {t["tolerationSeconds"] for t in pod["tolerations"]} == {30}


def test_engines_get_a_grace_period_to_hand_work_back_and_are_told_it():
    """A busy engine finishes its item and hands the rest back between SIGTERM and SIGKILL
    (kubemagic.k8s.engine): the period is the pod's, and the engine reads it from its env."""
    def grace(job):
        pod = job["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        return pod["terminationGracePeriodSeconds"], env[GRACE_ENV]

    assert grace(_job(parse_options())) == (30, "30")
    assert grace(_job(parse_options(**_magic("--termination-grace-period-seconds 90")))) == (
        90, "90")
    # set through --pod-overrides, the engine still learns the period it really has
    assert grace(_job(parse_options(pod_overrides={"terminationGracePeriodSeconds": 7}))) == (
        7, "7")
    with pytest.raises(UsageError, match="--termination-grace-period-seconds '0' must be at"):
        parse_options(termination_grace_period_seconds="0")
    with pytest.raises(UsageError, match="KUBEMAGIC_GRACE_SECONDS"):
        parse_options(env={GRACE_ENV: "1"})
