"""Graceful eviction on the real cluster: an engine pod evicted mid-map (the Eviction API,
what ``kubectl drain`` calls) finishes its running item, hands the rest of its work back,
and exits 143 — every item comes back exactly once, in order, and every item *runs*
exactly once: nothing it finished is run again elsewhere (issue 16, item 3).

Executions are counted from what the items print: each item prints one line when it
starts, tagged on the engine with the item's index, and the map keeps every line. A chunk
lost with its engine and re-run would print its finished items twice (their lines were
sent before the engine went). Speculative copies are off: they would run items twice on
purpose.

The second test drains a whole node with ``kubectl drain`` (the ``second_node`` fixture of
``tests/cluster/fixture.py`` adds node ``kubemagic-node2`` for it).
"""

from __future__ import annotations

import collections
import contextlib
import re
import threading
import time
from typing import Any, Callable

import ipyparallel as ipp
import pytest
from kubernetes import client, watch

from ._support import (
    NOTHING,
    admin,
    clean_process_env,
    engine_pods,
    leftovers,
    make_tenant,
    new_session,
    pod_index,
    wait_for,
)

pytestmark = pytest.mark.cluster

N_ITEMS = 120
CHUNK = 6
EXPECTED = [x * x for x in range(N_ITEMS)]
#: the first test stays on the first node: the second one comes and goes with other tests
FIRST_NODE = {"kubernetes.io/hostname": "kubemagic-node"}


@ipp.interactive  # pickled by value: engines cannot import the tests package
def work(x):
    import time

    print("ran", x, flush=True)
    time.sleep(0.05)
    return x * x


class PodEnd:
    """Follows one pod through a watch until it is deleted: its engine container's exit
    code and termination message, and its conditions (a pod object disappears moments
    after its container ends, so polling could miss the end)."""

    def __init__(self, core: client.CoreV1Api, namespace: str, name: str) -> None:
        self.exit_code: int | None = None
        self.message = ""
        self.conditions: set[str] = set()
        self.node = ""
        self.deleted = threading.Event()
        self._watch = watch.Watch()
        stream = self._watch.stream(core.list_namespaced_pod, namespace,
                                    field_selector=f"metadata.name={name}", timeout_seconds=240)
        self._thread = threading.Thread(target=self._follow, args=(stream,), daemon=True)
        self._thread.start()

    def _follow(self, stream: Any) -> None:
        with contextlib.suppress(Exception):
            for event in stream:
                pod = event["object"]
                self.node = pod.spec.node_name or self.node
                self.conditions |= {c.type for c in pod.status.conditions or []
                                    if c.status == "True"}
                for status in pod.status.container_statuses or []:
                    ended = status.state.terminated if status.state else None
                    if status.name == "engine" and ended is not None:
                        self.exit_code, self.message = ended.exit_code, ended.message or ""
                if event["type"] == "DELETED":
                    break
        self.deleted.set()

    def stop(self) -> None:
        self._watch.stop()


def evict(k8s_cluster: Any, namespace: str, pod: str) -> None:
    """POST .../pods/NAME/eviction, as ``kubectl drain`` does (admin: the session's Role
    has no eviction rights, and a cluster operator drains, not the notebook user)."""
    core, _ = admin(k8s_cluster)
    core.create_namespaced_pod_eviction(pod, namespace, client.V1Eviction(
        metadata=client.V1ObjectMeta(name=pod, namespace=namespace)))


def executions(handle: Any) -> collections.Counter:
    """How often each item ran, from the "ran X" lines the items printed."""
    ran = collections.Counter()
    for line in handle.output.log.lines:
        if line.stream == "stdout" and line.text.startswith("ran "):
            assert line.text == f"ran {line.index}", line  # the engine's tag names the item
            ran[line.index] += 1
    return ran


def outcome(handle: Any, timeout: float = 300) -> list[Any]:
    """The map's results (``result()`` would also print every item's line into the test's
    output)."""
    wait_for(handle.done, timeout, "the map ended", interval=0.01)
    return handle.value()


def timed_map(s: Any) -> tuple[Any, float]:
    t0 = time.monotonic()
    handle = s.map_async(work, range(N_ITEMS), chunksize=CHUNK, speculate=False)
    assert outcome(handle) == EXPECTED
    return handle, time.monotonic() - t0


def disrupt_mid_map(k8s_cluster: Any, s: Any, namespace: str, baseline: float,
                    disrupt: Callable[[str], None], what: str,
                    victims: Callable[[Any], bool] = lambda pod: True) -> PodEnd:
    """Run the map, and once it is going disrupt the pod of an engine that holds chunks
    (one ``victims`` accepts); check what must hold; return how that pod ended."""
    core, batch = admin(k8s_cluster)
    pods = {p.metadata.name: p for p in engine_pods(k8s_cluster, namespace, s.cluster_id)
            if p.status.phase == "Running" and not p.metadata.deletion_timestamp}
    by_slot = {pod_index(p): p for p in pods.values() if victims(p)}
    assert by_slot, f"no engine pod to {what}: {[(n, p.spec.node_name) for n, p in pods.items()]}"
    handle = s.map_async(work, range(N_ITEMS), chunksize=CHUNK, speculate=False)
    t0 = time.monotonic()
    try:
        wait_for(lambda: handle.progress().done >= 2 * CHUNK, 60, "the map got going")
        victim = wait_for(
            lambda: next((e for e in s.live_engines() if e.inflight and e.index in by_slot),
                         None), 10, f"an engine to {what} with chunks in flight")
        pod = by_slot[victim.index].metadata.name
        end = PodEnd(core, namespace, pod)
        disrupt(pod)
    except BaseException:
        handle.cancel()
        with contextlib.suppress(Exception):
            outcome(handle, 60)
        raise
    results = outcome(handle)
    elapsed = time.monotonic() - t0
    progress = handle.progress()
    assert end.deleted.wait(120), f"pod {pod} was not deleted"
    end.stop()
    ran = executions(handle)
    print(f"\n{what} (engine {victim.id}, slot {victim.index}, pod {pod}) mid-map: "
          f"{elapsed:.2f} s vs {baseline:.2f} s undisturbed (+{elapsed - baseline:.2f} s); "
          f"the engine said: {end.message.splitlines()[0] if end.message else '(nothing)'}")

    # every item returned exactly once, in order; each ran exactly once
    assert results == EXPECTED
    assert progress.state == "done" and progress.retried_chunks == 0, progress
    twice = {i: n for i, n in ran.items() if n != 1}
    assert not twice and sorted(ran) == list(range(N_ITEMS)), (
        f"items run more than once: {twice}; never seen: {set(range(N_ITEMS)) - set(ran)}")
    # it drained: exit 143 after handing work back, not a lost engine
    assert end.exit_code == 143, (end.exit_code, end.message)
    handed = re.search(r"handed back (\d+) item", end.message)
    assert handed and int(handed.group(1)) >= 1, end.message  # the hand-back really happened
    assert "DisruptionTarget" in end.conditions, end.conditions

    # the Job did not fail, and the slot got a new pod
    job_name = by_slot[victim.index].metadata.labels["batch.kubernetes.io/job-name"]
    job = batch.read_namespaced_job(job_name, namespace)
    assert not [c.type for c in job.status.conditions or []
                if c.type == "Failed" and c.status == "True"], job.status
    wait_for(lambda: any(pod_index(p) == victim.index and p.metadata.name != pod
                         and p.status.phase == "Running" and not p.metadata.deletion_timestamp
                         for p in engine_pods(k8s_cluster, namespace, s.cluster_id)),
             120, f"a new pod for slot {victim.index}")
    wait_for(lambda: len(s.ready_ids()) == len(pods), 90, "the new engine registered")
    return end


@pytest.fixture(scope="module")
def fleet(k8s_cluster):
    with clean_process_env():
        tenant = make_tenant(k8s_cluster, "drain")
        s = new_session(k8s_cluster, tenant, n=3, idle_timeout=0, node_selector=FIRST_NODE)
        s.start()
        try:
            handle, baseline = timed_map(s)
            # the count itself: every item's line arrives, once
            assert executions(handle) == collections.Counter(range(N_ITEMS))
            print(f"\nmap of {N_ITEMS} items x 50 ms in chunks of {CHUNK} on 3 pods, "
                  f"undisturbed: {baseline:.2f} s")
            yield s, tenant.namespace, baseline
        finally:
            s.stop()
        assert leftovers(k8s_cluster, tenant.namespace) == NOTHING


def test_an_evicted_engine_hands_back_its_work_and_nothing_runs_twice(k8s_cluster, fleet):
    s, namespace, baseline = fleet
    disrupt_mid_map(k8s_cluster, s, namespace, baseline,
                    lambda pod: evict(k8s_cluster, namespace, pod), "pod evicted")
    # the fleet maps normally afterwards
    assert s.map(work, range(12), progress=False, speculate=False) == EXPECTED[:12]


def test_kubectl_drain_of_a_node_hands_back_its_engines_work(k8s_cluster, second_node):
    """``kubectl drain`` of the node holding an engine: evicted like above, and the Job
    puts the slot's new pod on the remaining node."""
    node = second_node.name
    with clean_process_env():
        tenant = make_tenant(k8s_cluster, "drainnode")
        s = new_session(k8s_cluster, tenant, n=2, idle_timeout=0)  # spread over the nodes
        s.start()
        try:
            wait_for(lambda: any(p.spec.node_name == node and p.status.phase == "Running"
                                 for p in engine_pods(k8s_cluster, tenant.namespace,
                                                      s.cluster_id)),
                     120, f"an engine pod on {node}")
            wait_for(lambda: len(s.ready_ids()) == 2, 90, "both engines registered")
            _, baseline = timed_map(s)

            def drain(pod: str) -> None:
                # only this session's pods: the cluster is shared
                k8s_cluster.run_kubectl(
                    "drain", node, "--ignore-daemonsets", "--delete-emptydir-data",
                    f"--pod-selector=app.kubernetes.io/instance={s.cluster_id}",
                    "--timeout=120s")

            try:
                end = disrupt_mid_map(k8s_cluster, s, tenant.namespace, baseline, drain,
                                      "node drained",
                                      victims=lambda p: p.spec.node_name == node)
                assert end.node == node
                # the slot's new pod runs on the node that is left
                assert all(p.spec.node_name != node for p in engine_pods(
                    k8s_cluster, tenant.namespace, s.cluster_id)
                    if p.status.phase == "Running")
            finally:
                k8s_cluster.run_kubectl("uncordon", node, check=False)
        finally:
            s.stop()
    assert leftovers(k8s_cluster, tenant.namespace) == NOTHING
