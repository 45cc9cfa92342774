"""Backends by registry: the ``kubemagic.backends`` entry points, ``auto``, and the checks
derived from each backend's options dataclass (wrong backend, fleet match, flags)."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
from dataclasses import fields, is_dataclass
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import kubemagic.backends as backends
from kubemagic.backends import (
    GROUP,
    Backend,
    backend_choices,
    make_backend_spec,
    registered,
    resolve_backend_name,
)
from kubemagic.backends.options import declared, fleet_conflicts, option_flags
from kubemagic.backends.local import local_backend
from kubemagic.cli import build_parser
from kubemagic.errors import UsageError
from kubemagic.magics import KubeMagics


def test_backends_come_from_the_entry_point_group():
    names = sorted(ep.name for ep in entry_points(group=GROUP))
    assert names == ["kubernetes", "local"]
    assert list(registered()) == ["kubernetes", "local"]  # auto's order: Kubernetes first
    for entry in registered().values():
        assert isinstance(entry, Backend) and is_dataclass(entry.options)
        assert all(opt.help for opt in declared(entry.options).values())


def test_backend_choices_of_the_magic_and_the_cli_come_from_the_registry():
    assert backend_choices() == ["auto", "kubernetes", "local"]
    magic = KubeMagics.kubemap.parser._option_string_actions["--backend"]
    demo = build_parser()._subparsers._group_actions[0].choices["demo"]
    assert magic.choices == demo._option_string_actions["--backend"].choices == backend_choices()


def test_the_package_names_no_backend():
    """backends/__init__.py asks the registry; it neither imports nor names kubemagic.k8s, and
    loading every entry (for auto and the flags) does not import the Kubernetes client."""
    source = Path(backends.__file__).read_text()
    assert "k8s" not in source and "import kubernetes" not in source
    code = ("import sys, kubemagic.backends as b; b.registered(); "
            "print(sorted(m for m in sys.modules if m == 'kubernetes' or "
            "m.startswith(('kubernetes.', 'kubemagic.k8s.backend', 'kubemagic.k8s.launcher'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _kubeconfig(path: Path, server: str) -> str:
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: c, cluster: {{server: '{server}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n")
    return str(path)


def test_auto_asks_each_backend_in_rank_order(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    assert resolve_backend_name("auto") == "local"
    with socket.socket() as server:  # an API server address that accepts connections
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        monkeypatch.setenv("KUBECONFIG", _kubeconfig(tmp_path / "cfg", f"https://127.0.0.1:{port}"))
        assert resolve_backend_name("auto") == "kubernetes"
    assert resolve_backend_name("local") == "local"


def test_unknown_backend_lists_the_registered_ones():
    with pytest.raises(UsageError, match="unknown backend 'mars'") as e:
        resolve_backend_name("mars")
    assert e.value.fix == "use --backend auto, --backend kubernetes or --backend local"


def test_make_backend_spec_goes_through_the_entry_point():
    spec = make_backend_spec("local", env="OMP_NUM_THREADS=1")
    assert spec.name == "local"
    assert spec.config["ScalableLocalEngineSetLauncher"]["environment"] == {"OMP_NUM_THREADS": "1"}


def test_local_backend_refuses_options_of_another_backend_by_name():
    with pytest.raises(UsageError, match="--image, --memory only apply to engines on "
                       "Kubernetes, but the backend is local") as e:
        local_backend(image="x", memory="1Gi")
    assert "add --backend kubernetes" in e.value.fix
    with pytest.raises(UsageError, match="--node-selector, --tolerations only apply"):
        local_backend(tolerations="a", node_selector="a=b")
    with pytest.raises(UsageError, match="unknown option.*colour.*local backend"):
        local_backend(colour="red")
    # empty values of another backend's options mean nothing: one call serves both backends
    assert local_backend(gpu=0, image=None, node_selector={}).name == "local"


def test_local_env_is_checked_like_a_flag():
    assert local_backend(env={"A": 1}).config["ScalableLocalEngineSetLauncher"] == {
        "environment": {"A": "1"}}
    with pytest.raises(UsageError, match="--env 'A' is not KEY=VALUE"):
        local_backend(env="A")
    with pytest.raises(UsageError, match="KUBEMAGIC_ENGINE_INDEX is set by kubemagic"):
        local_backend(env="KUBEMAGIC_ENGINE_INDEX=3")


def test_one_flag_per_option_of_every_backend():
    flags = {f.name: f for f in option_flags()}
    every = {f.name for entry in registered().values() for f in fields(entry.options)}
    assert set(flags) == every
    assert flags["env"].kwargs["help"].startswith("[kubernetes, local] ")
    assert flags["node_selector"].args == ("--node-selector",)
    assert flags["curve"].kwargs["action"] is argparse.BooleanOptionalAction
    assert flags["gpu"].kwargs["type"] is int  # a number default: a number on the line
    assert "type" not in flags["run_as_user"].kwargs  # nullable: "none" is a value
    assert all(f.kwargs["default"] is None for f in flags.values())


def test_fleet_conflicts_compare_checked_values():
    running = {"node_selector": {"gpu": "true"}, "image": "img:1"}
    assert fleet_conflicts("kubernetes", running, {"node_selector": "gpu=true"}) == []
    assert fleet_conflicts("kubernetes", running, {"gpu": "0"}) == []  # the default
    assert fleet_conflicts("kubernetes", running, {"image": "img:2", "cpu": "1"}) == [
        "image", "cpu"]
    assert fleet_conflicts("local", {}, {"image": "img:1"}) == ["image"]
    assert fleet_conflicts("local", {"env": {"A": "1"}}, {"env": "A=1"}) == []
    with pytest.raises(UsageError, match="--cpu"):
        fleet_conflicts("kubernetes", running, {"cpu": "many"})
