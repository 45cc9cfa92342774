"""ipyparallel's own launcher tests, run against the Kubernetes launcher on the real cluster.

The tests ship in ipyparallel's wheel (``ipyparallel/tests``). Their functions and the
fixtures of their ``conftest.py`` are imported into this module — fixtures imported into a
module apply to it alone, so ipyparallel's autouse ones (a temporary IPython directory, a
fresh zmq context per test) touch no other test. This module overrides the two fixtures
ipyparallel provides for that purpose: ``engine_launcher_class`` is ``"kubernetes"`` and
``cluster_config`` configures a tenant namespace (``kubemagic rbac``'s least-privilege
service account), so every ``ipp.Cluster`` the tests create starts its engines as pods of a
Job, with the controller beside the test. The async tests run in a fresh event loop each,
as pytest-asyncio would run them.

:data:`RUN` lists the tests that apply to engines in pods, :data:`EXCLUDED` the others with
the reason; every test of those modules is in one of them
(:func:`test_every_ipyparallel_launcher_test_is_run_or_excluded`), so a new ipyparallel
test is noticed. Each engine-starting test costs a Job (pods start, engines register, pods
are deleted); the selection keeps the module under three minutes on a 2-core machine.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from ipyparallel.serialize.canning import use_cloudpickle, use_pickle
from ipyparallel.tests import test_apps as ipp_apps
from ipyparallel.tests import test_cluster as ipp_cluster
from ipyparallel.tests import test_launcher as ipp_launcher
from ipyparallel.tests.conftest import (  # noqa: F401  (fixtures of its conftest)
    Cluster,
    Context,
    controller_launcher_class,
    ipython,
    ipython_dir,
)
from ipyparallel.tests.test_launcher import (  # noqa: F401  (fixtures of test_launcher)
    build_launcher,
    cluster_id,
    profile_dir,
    work_dir,
)
from traitlets.config import Config

from kubemagic.k8s.launcher import KubernetesEngineSetLauncher

from .helpers import Tenant, launcher_config, make_tenant

pytestmark = pytest.mark.cluster

MODULES = (ipp_cluster, ipp_apps, ipp_launcher)

#: ipyparallel test -> what of the launcher it exercises
RUN = {
    ipp_cluster: {
        "test_cluster_id": "cluster ids stay unique with this launcher configured",
        "test_start_stop_engines": "start/stop of an engine set; find_launcher_class",
        "test_start_stop_cluster": "controller and engines started and stopped together",
        "test_signal_engines": "a signal reaches the engine processes and interrupts a task",
        "test_get_output": "the engines' output after stop()",
        "test_async_with": "five engines through `async with Cluster(n=5)`",
        "test_sync_with": "five engines through the *_sync wrappers: no loop runs between "
        "calls",
        "test_start_and_connect_activate": "start_and_connect_sync, with and without %px",
        "test_cluster_repr": "an engine set with a chosen id, stopped before it registered",
        "test_to_from_dict": "reattach from the cluster file: signal and stop from the copy",
        "test_default_from_file": "reattach through the default cluster file",
        "test_cluster_manager_notice_stop": "reattached copies notice the engines stopped",
        "test_wait_for_engines_crash": "engines crashing at start-up stop the engine set",
    },
    ipp_launcher: {
        "test_profile_dir_env": "the launcher's environment names the profile",
        "test_cluster_id_env": "the launcher's environment names the cluster",
        "test_entrypoints": "the ipyparallel.engine_launchers entry points round-trip",
    },
    ipp_apps: {},
}

_NO_ENGINES = "starts no engines (or no Cluster): the engine launcher plays no part"
#: ipyparallel test -> why it is not run here
EXCLUDED = {
    ipp_cluster: {
        "test_restart_engines": "PIDs: compares engine PIDs before and after the restart, but "
        "each engine has the same PID in its own pod's PID namespace",
        "test_start_stop_controller": _NO_ENGINES,
        "test_ipython_log": _NO_ENGINES,
        "test_load_profile": _NO_ENGINES,
        "test_cluster_abbreviations": _NO_ENGINES,
        "test_cluster_manager": _NO_ENGINES,
    },
    ipp_launcher: {
        "test_batch_template": "host files: batch-system launchers write job scripts",
        "test_winhpc_template": "host files: Windows HPC launchers write job files",
        "test_ssh_remote_profile_dir": "SSH launchers only",
        "test_ssh_waitpid": "PIDs: waits for a local process by PID over SSH",
    },
    ipp_apps: {
        "test_ipcluster_list": "asserts the launcher column reads 'Local'",
        "test_ipcluster_start_stop": "host files: `ipcluster start` reads the profile's config "
        "files, which these fixtures do not write (tests/k8s/test_ipcluster_cli.py runs "
        "ipcluster with this launcher)",
        "test_version": _NO_ENGINES,
        "test_help_all": _NO_ENGINES,
        "test_ipcluster_help_all": _NO_ENGINES,
        "test_bind_kernel": _NO_ENGINES,
        "test_ipcluster_clean": _NO_ENGINES,
    },
}


def _as_sync(test: Callable[..., Any]) -> Callable[..., Any]:
    """ipyparallel's test as a function of this module, with its signature and marks; an
    async one runs in a fresh event loop (what pytest-asyncio does in ipyparallel's CI)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        if inspect.iscoroutinefunction(test):
            asyncio.run(test(*args, **kwargs))
        else:
            test(*args, **kwargs)

    return run


for _module, _tests in RUN.items():
    for _name in _tests:
        globals()[_name] = _as_sync(getattr(_module, _name))
del _module, _tests, _name


# -- ipyparallel's fixtures, pointed at the cluster -----------------------------------------
@pytest.fixture(scope="module")
def tenant(k8s_cluster: Any) -> Tenant:
    return make_tenant(k8s_cluster, "ipp-suite")


@pytest.fixture
def engine_launcher_class() -> str:
    return "kubernetes"


@pytest.fixture
def cluster_config(k8s_cluster: Any, tenant: Tenant) -> Config:
    """Engines as pods in the tenant namespace; the controller listens where pods reach it."""
    config = launcher_config(tenant, k8s_cluster.image)
    config.Cluster.controller_ip = "0.0.0.0"
    config.Cluster.controller_location = k8s_cluster.host_ip
    return config


@pytest.fixture
def launcher(build_launcher: Callable[..., Any]) -> KubernetesEngineSetLauncher:
    """test_launcher's launcher fixture, for this launcher instead of ipyparallel's list."""
    return build_launcher(Launcher=KubernetesEngineSetLauncher)


@pytest.fixture
def crash_on_startup_in_pods(cluster_config: Config) -> None:
    """test_wait_for_engines_crash makes engines crash through ``$PYTHONSTARTUP``, set in
    the test's own environment, which local engines inherit. Pods inherit nothing from
    the test process: give the engine pods the variable, pointing at the same file in the
    engine image (the test cluster's image holds this interpreter and its packages at the
    base interpreter's prefix)."""
    script = Path(ipp_cluster.__file__).with_name("_test_startup_crash.py")
    in_image = Path(sys.base_prefix) / script.relative_to(sys.prefix)
    cluster_config.KubernetesEngineSetLauncher.environment = {"PYTHONSTARTUP": str(in_image)}


@pytest.fixture
def functions_by_value() -> Iterator[None]:
    """The signal tests send functions of ipyparallel's test module (a lambda, its
    ``_prepare_signal``) to the engines, which import that module to run them — it imports
    pytest. Local engines share the test's interpreter; pods run the engine image, which
    has no pytest. Send that module's functions by value (cloudpickle, which ipyparallel
    supports), as a notebook's own functions are sent."""
    cloudpickle.register_pickle_by_value(ipp_cluster)
    use_cloudpickle()
    yield
    use_pickle()
    cloudpickle.unregister_pickle_by_value(ipp_cluster)


for _name, _fixture in (
    ("test_wait_for_engines_crash", "crash_on_startup_in_pods"),
    ("test_signal_engines", "functions_by_value"),
    ("test_to_from_dict", "functions_by_value"),
):
    globals()[_name] = pytest.mark.usefixtures(_fixture)(globals()[_name])
del _name, _fixture


def test_every_ipyparallel_launcher_test_is_run_or_excluded():
    for module in MODULES:
        tests = {name for name, obj in vars(module).items()
                 if name.startswith("test_") and callable(obj)}
        run, excluded = set(RUN[module]), set(EXCLUDED[module])
        assert not run & excluded, module.__name__
        assert tests == run | excluded, (module.__name__, tests ^ (run | excluded))
        assert all(EXCLUDED[module].values())
