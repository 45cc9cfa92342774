"""A real kernel using the Kubernetes backend: interrupt, bad input, widget state (issue 5,
items 3–5).

One kernel serves the module. It sees the cluster only through ``$KUBECONFIG``, which
authenticates as the least-privilege service account of ``kubemagic rbac`` (the namespace
defaults to that kubeconfig's context, as on JupyterHub).

The bad-input table holds the Kubernetes cases; the local ones are in
``tests/kernel/test_magic.py`` (``BAD_INPUT``) and
``tests/kernel/test_reliability_local.py`` (``test_api_misuse_is_one_clear_error``).
Each case: exactly one error, of the expected class, saying what is wrong and
"how to fix", without a traceback into kubemagic; the kernel stays alive (and a running
session still maps); and no Job, pod or Secret labelled ``app.kubernetes.io/name=kubemagic``
is left over in the namespaces involved (listed before and after).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable

import pytest

from ._support import (
    NOTHING,
    KubeKernel,
    clean_process_env,
    connection_info,
    engine_pods,
    kernel_env,
    leftovers,
    make_tenant,
    pod_index,
    secret_values,
    seconds_until,
)

pytestmark = pytest.mark.cluster

NO_IMAGE = "kubemagic-no-such-image:404"


@dataclass
class World:
    kernel: KubeKernel
    namespace: str
    other: str  # exists, but the service account has no rights there
    image: str
    host: str

    def flags(self, **override: str) -> str:
        """Magic flags of a Kubernetes session in the tenant namespace."""
        opts = {"backend": "kubernetes", "image": self.image, "namespace": self.namespace,
                "controller-address": self.host, **override}
        return " ".join(f"--{k} {v}" for k, v in opts.items() if v is not None)

    def api(self, **override: Any) -> str:
        """Python-API keyword arguments of the same session."""
        opts = {"backend": "kubernetes", "image": self.image, "namespace": self.namespace,
                "controller_address": self.host, **override}
        return ", ".join(f"{k}={v!r}" for k, v in opts.items())

    def running(self) -> bool:
        out = self.kernel.run("_s = kubemagic.current()\n"
                              "print(_s is not None and _s.state == 'running')")
        return out.strip() == "True"

    def ensure(self, session: bool) -> None:
        if session and not self.running():
            self.kernel.run(f"%kubemap start {self.flags()}\ns = kubemagic.current()",
                            timeout=180)
        elif not session and self.running():
            self.kernel.run("%kubemap stop", timeout=180)

    def objects(self, k8s_cluster) -> dict[str, Any]:
        return {ns: leftovers(k8s_cluster, ns) for ns in (self.namespace, self.other)}


SETUP = """%load_ext kubemagic
import kubemagic, os, threading, time
xs = list(range(20))
def f(x):
    return x
def slow(x):
    import time
    time.sleep(0.05)
    return x * x
"""


@pytest.fixture(scope="module")
def world(k8s_cluster):
    with clean_process_env():
        tenant = make_tenant(k8s_cluster, "kernel")
        other = k8s_cluster.create_namespace("forbidden")
        kernel = KubeKernel(kernel_env(k8s_cluster, tenant))
        w = World(kernel, tenant.namespace, other, k8s_cluster.image, k8s_cluster.host_ip)
        try:
            kernel.run(SETUP)
            yield w
        finally:
            kernel.shutdown()  # atexit in the kernel stops its session
        took = seconds_until(lambda: w.objects(k8s_cluster) == {tenant.namespace: NOTHING,
                                                                other: NOTHING}, 30)
        assert took is not None, w.objects(k8s_cluster)


# -- interrupt -------------------------------------------------------------------------------
def test_interrupt_cancels_pending_tasks_and_keeps_the_pods(k8s_cluster, world):
    world.ensure(session=True)
    k = world.kernel
    cluster_id = k.run("print(s.cluster_id)").strip()
    pods_before = sorted(p.metadata.name for p in engine_pods(k8s_cluster, world.namespace,
                                                               cluster_id))
    engines_before = k.run("print(sorted(s.ready_ids()))").strip()
    msg_id = k.submit("r = s.map(slow, range(2000), progress=False)")  # ~50 s of work
    k.poll_iopub(3.0)
    t0 = time.monotonic()
    k.km.interrupt_kernel()
    _, errors = k.collect(msg_id, timeout=60)
    took = time.monotonic() - t0
    print(f"\ninterrupt -> cell ended after {took:.2f} s")
    assert [e["ename"] for e in errors] == ["KeyboardInterrupt"], errors
    assert took < 15, "queued chunks must be aborted, not run"
    out = k.run("p = s.current_map.progress()\nprint(p.state, p.done < p.total)")
    assert out.split() == ["cancelled", "True"]
    # the same engines, in the same pods, and they map at once
    assert k.run("print(sorted(s.ready_ids()))").strip() == engines_before
    pods_after = sorted(p.metadata.name for p in engine_pods(k8s_cluster, world.namespace,
                                                              cluster_id)
                        if p.status.phase == "Running")
    assert pods_after == pods_before
    t0 = time.monotonic()
    out = k.run("print(s.map(slow, range(20), progress=False))")
    assert out.strip() == str([x * x for x in range(20)])
    assert time.monotonic() - t0 < 10, "the engines' queues must be empty after the interrupt"


# -- scaling from the kernel while a map runs ------------------------------------------------
def test_scale_up_then_down_during_a_map_in_the_kernel(k8s_cluster, world):
    """Issue 4 through the line magic in a real kernel: ``%kubemap scale 3`` mid-session,
    then ``%kubemap scale 2`` while a map runs on all three pods — every item once, in
    order, none retried (the leaving slot drains), and slot 2's pod is deleted."""
    world.ensure(session=True)
    k = world.kernel
    k.run("%kubemap scale 3", timeout=180)
    assert k.run("print(len(s.ready_ids()))").strip() == "3"
    k.run("h = s.map_async(slow, range(300))")
    k.run("while not any(e.index == 2 and e.inflight for e in s.live_engines()):\n"
          "    time.sleep(0.01)")
    k.run("%kubemap scale 2", timeout=180)
    out = k.run("r = h.result(timeout=300)\np = h.progress()\n"
                "print(r == [x * x for x in range(300)], p.retried_chunks, "
                "sorted(e.index for e in s.live_engines()))", timeout=320)
    assert out.strip().split(maxsplit=2) == ["True", "0", "[0, 1]"], out
    cluster_id = k.run("print(s.cluster_id)").strip()
    gone = seconds_until(lambda: sorted(pod_index(p) for p in engine_pods(
        k8s_cluster, world.namespace, cluster_id)) == [0, 1], 60)
    assert gone is not None, [p.metadata.name for p in engine_pods(
        k8s_cluster, world.namespace, cluster_id)]


# -- widget state and user-visible output hold no key ---------------------------------------
def test_widget_status_and_logs_hold_no_key(k8s_cluster, world):
    world.ensure(session=True)
    k = world.kernel
    k.run("%kubemap widget")
    k.find_model("VBoxModel")
    k.run("print(s.map(slow, range(10), progress=True))")  # progress updates the widget
    k.poll_iopub(1.0)
    shown = json.dumps(k.comms) + k.run("%kubemap status") + k.run("%kubemap logs")
    secrets = secret_values(connection_info(k8s_cluster, world.namespace))
    assert "curve_serverkey" in secrets  # CurveZMQ on by default
    for name, value in secrets.items():
        assert value not in shown, f"the {name} shows in the widget/status/logs"
    assert len(k.comms) >= 10  # really looked at the widget's models


# -- bad input -------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    #: the cell, or a function of the World making it
    cell: str | Callable[[World], str]
    #: None: the cell must work, and ``words`` are checked in its output
    ename: str | None
    #: each a string or a tuple of alternatives; or a function of the World making them
    words: tuple | Callable[[World], tuple] = ()
    #: needs a running session before the cell
    session: bool = False
    #: Kubernetes objects afterwards: the "same" as before, or "nothing"
    after: str = "same"
    timeout: float = 120


PUSH_300MB = """t0 = time.time()
s.push(big=b'x' * 300_000_000)
print('pushed to', len(s.ready_ids()), 'engines in', round(time.time() - t0, 1), 's')
print('lengths', s.client[s.ready_ids()].apply_sync(lambda: len(big)))
print(s.map(lambda i: len(big) + i, range(3), progress=False))
"""

CASES = [
    # -- with a running session ---------------------------------------------------------------
    # a very large push works (engines have no memory limit unless --memory is given)
    Case("push-300MB-works", PUSH_300MB, None,
         ("lengths [300000000, 300000000]", "[300000000, 300000001, 300000002]"),
         session=True, timeout=300),
    Case("function-not-defined", "%%kubemap nofunc xs\npass\n", "UsageError",
         ("'nofunc' is not defined",), session=True),
    Case("iterable-not-defined", "%%kubemap f nosuch\npass\n", "UsageError",
         ("'nosuch' is not defined",), session=True),
    Case("not-iterable", "%%kubemap f 42\npass\n", "UsageError", ("not iterable",),
         session=True),
    Case("push-name-not-defined", "%%kubemap f xs --push nope\npass\n", "UsageError",
         ("'nope'",), session=True),
    Case("cell-syntax-error", "%%kubemap f xs\ndef broken(:\n", "UsageError",
         ("syntax error in the cell body",), session=True),
    Case("exception-in-some-items",
         "%%kubemap boom xs --out nope\ndef boom(x):\n    if x == 7:\n"
         "        raise ValueError('bad 7')\n    return x\n",
         "RemoteItemError", ("item 7 (7) raised ValueError: bad 7", "remote traceback"),
         session=True),
    # not errors: an empty iterable maps to [], a generator is consumed
    Case("empty-iterable-and-generator",
         "print(s.map(f, [], progress=False), s.map(f, (x for x in range(3)), "
         "progress=False))", None, ("[] [0, 1, 2]",), session=True),
    Case("n-zero", lambda w: f"%%kubemap f xs {w.flags()} -n 0\npass\n", "UsageError",
         ("at least 1",)),
    Case("n-negative", lambda w: f"%%kubemap f xs {w.flags()} -n -3\npass\n", "UsageError",
         ("at least 1",)),
    Case("push-unpicklable", "s.push(lock=threading.Lock())", "UsageError",
         ("cannot send", "picklable"), session=True),
    Case("map-unpicklable-function", "s.map(lambda x, g=threading.Lock(): x, [1])",
         "UsageError", ("cannot send",), session=True),
    Case("second-cell-other-namespace", lambda w: f"%%kubemap f xs --namespace {w.other}\npass\n",
         "SessionError", ("different --namespace", "%kubemap stop"), session=True),
    Case("second-cell-other-backend", "%%kubemap f xs --backend local\npass\n",
         "SessionError", ("different --backend",), session=True),
    Case("second-cell-other-image", "%%kubemap f xs --image python:3.11\npass\n",
         "SessionError", ("different --image",), session=True),
    Case("scale-below-0", "%kubemap scale -1", "UsageError", ("at least 0",), session=True),
    Case("scale-api-below-0", "s.scale(-4)", "UsageError", ("at least 0",), session=True),
    # -- stopping ------------------------------------------------------------------------------
    Case("scale-while-stopped", "s = kubemagic.current()\n%kubemap stop\ns.scale(3)",
         "SessionError", ("stopped",), session=True, after="nothing"),
    Case("map-after-stop", "s.map(f, xs)", "SessionError", ("stopped",), after="nothing"),
    Case("line-scale-without-session", "%kubemap scale 3", "SessionError",
         ("no engines are running",), after="nothing"),
    # -- before any session (each cell would start one) ---------------------------------------
    Case("memory-1XB", lambda w: f"%%kubemap f xs {w.flags()} --memory 1XB\npass\n",
         "UsageError", ("--memory '1XB'",)),
    Case("cpu-many", lambda w: f"%%kubemap f xs {w.flags()} --cpu many\npass\n",
         "UsageError", ("--cpu 'many'",)),
    Case("gpu-negative", lambda w: f"%%kubemap f xs {w.flags()} --gpu -1\npass\n",
         "UsageError", ("--gpu -1",)),
    Case("image-does-not-exist",
         lambda w: f"%%kubemap f xs {w.flags(image=NO_IMAGE)} --start-timeout 20\npass\n",
         "StartupError", (NO_IMAGE, ("ErrImagePull", "ImagePullBackOff"),
                          "check that --image exists"), timeout=90),
    # a namespaced service account may not read namespaces, so it cannot tell "missing"
    # from "forbidden": the error names the namespace and says to pick another
    Case("namespace-does-not-exist",
         lambda w: f"%%kubemap f xs {w.flags(namespace='kubemagic-nowhere')}\npass\n",
         "PermissionDenied", ("'kubemagic-nowhere'", "--namespace")),
    Case("namespace-forbidden",
         lambda w: f"%%kubemap f xs {w.flags(namespace=w.other)}\npass\n",
         "PermissionDenied",
         lambda w: ("may not create jobs.batch", f"namespace '{w.other}'", "kubemagic rbac")),
    Case("namespace-invalid-name",
         lambda w: f"%%kubemap f xs {w.flags(namespace='Bad_NS')}\npass\n",
         "UsageError", ("'Bad_NS' is not a valid Kubernetes name",)),
    Case("controller-address-loopback",
         lambda w: f"%%kubemap f xs {w.flags()} --controller-address 127.0.0.1\npass\n",
         "UsageError", ("127.0.0.1", "loopback")),
    Case("backend-local-with-image", "%%kubemap f xs --backend local --image x\npass\n",
         "UsageError", ("--image only apply to engines on Kubernetes",)),
    Case("unknown-option", lambda w: f"%%kubemap f xs {w.flags()} --bogus-flag 3\npass\n",
         "UsageError", ("unrecognized arguments: --bogus-flag",)),
    Case("start-timeout-negative",
         lambda w: f"%%kubemap f xs {w.flags()} --start-timeout -5\npass\n",
         "UsageError", ("--start-timeout",)),
    Case("api-n-negative", lambda w: f"kubemagic.KubeCluster(n=-3, {w.api()})", "UsageError",
         ("at least 1",)),
    Case("api-kubeconfig-missing",
         lambda w: f"kubemagic.KubeCluster({w.api(kubeconfig='/nonexistent')})",
         "StartupError", ("no usable Kubernetes configuration",)),
    Case("api-pod-overrides-typo",
         lambda w: f"kubemagic.KubeCluster({w.api(pod_overrides={'priorityClassNme': 'x'})})",
         "UsageError", ("priorityClassNme",)),
    Case("api-env-reserved-name",
         lambda w: f"kubemagic.KubeCluster({w.api(env={'KUBEMAGIC_ENGINE_INDEX': '3'})})",
         "UsageError", ("KUBEMAGIC_ENGINE_INDEX",)),
    Case("api-port-range-too-small",
         lambda w: f"kubemagic.KubeCluster({w.api(port_range='29100-29105')})",
         "UsageError", ("--port-range",)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_on_kubernetes(k8s_cluster, world, case):
    world.ensure(session=case.session)
    k = world.kernel
    cell = case.cell(world) if callable(case.cell) else case.cell
    expected_words = case.words(world) if callable(case.words) else case.words
    before = world.objects(k8s_cluster)
    t0 = time.monotonic()
    if case.ename is None:
        out = k.run(cell, timeout=case.timeout)
        print(f"\n{case.id}: {out.strip()} ({time.monotonic() - t0:.1f} s)")
        for words in expected_words:
            assert words in out, out
    else:
        err = k.run_error(cell, timeout=case.timeout)
        took = time.monotonic() - t0
        text = err["evalue"]
        print(f"\n{case.id} ({took:.1f} s): {err['ename']}: {text[:300]}")
        assert err["ename"] == case.ename, f"{err['ename']}: {text}"
        for words in expected_words:
            alternatives = words if isinstance(words, tuple) else (words,)
            assert any(a in text for a in alternatives), f"{alternatives} not in: {text}"
        assert "how to fix" in text, text
        # one clear message: no traceback into kubemagic's internals
        assert not any("kubemagic/" in line for line in err["traceback"]), err["traceback"]
    # the kernel is alive, and a running session still maps
    assert k.run("print('alive')").strip() == "alive"
    if case.session and case.after == "same":
        assert k.run("print(s.map(abs, [-5], progress=False))").strip() == "[5]"
    # nothing leaked (a failed start may need its pods' termination: stop() waits for it)
    expected = before if case.after == "same" else {ns: NOTHING for ns in before}
    gone = seconds_until(lambda: world.objects(k8s_cluster) == expected, 30)
    assert gone is not None, f"left over: {world.objects(k8s_cluster)} (expected {expected})"
