"""Items that kill their engine pod, and items that never end, on the real cluster.

* An item that allocates far more than ``--memory 64Mi`` (the least an engine starts with
  here) is OOM-killed in every pod that runs it: the map fails with one error naming the
  item and ``OOMKilled`` with the limit, read from the pod's status in the launcher's
  watch; with ``return_exceptions`` it is that item's result and the others return.
* An endless item still running when ``timeout`` fires is interrupted through the
  controller (no ``pods/exec``); one that ignores the interrupt has its pod deleted without
  grace, the Job recreates the slot (its failure policy counts the kill against a generous
  per-slot limit: the Job does not fail), and the next map runs at once on the engine left.

Each test prints its timings (``-s``): reported, not asserted. The Job's per-slot backoff
(10 s for a slot's first loss, doubling) decides how soon a killed engine is back.
"""

from __future__ import annotations

import time

import ipyparallel as ipp
import pytest

from kubemagic.errors import KubemagicError, PoisonItemError

from ._support import (
    NOTHING,
    admin,
    clean_process_env,
    leftovers,
    make_tenant,
    new_session,
    wait_for,
)

pytestmark = pytest.mark.cluster


@ipp.interactive  # pickled by value: engines cannot import the tests package
def hog(x):
    if x == 5:
        block = bytearray(1 << 30)  # 1 GiB, every page touched: far over the limit
        for i in range(0, len(block), 4096):
            block[i] = 1
    return x


@ipp.interactive
def spins(x):
    import time

    if x == 2:
        while True:
            pass
    time.sleep(0.05)
    return x


@ipp.interactive
def deaf(x):
    import signal
    import time

    if x == 2:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        while True:
            pass
    time.sleep(0.05)
    return x


@ipp.interactive
def pod_of(x):
    import os
    import time

    time.sleep(0.25)
    return os.environ["KUBEMAGIC_POD_NAME"]


def job_failed(k8s_cluster, session) -> bool:
    """Whether the engine Job has failed (it must not: a killed pod is only replaced)."""
    _, batch = admin(k8s_cluster)
    job = batch.read_namespaced_job(session.launcher.job_name, session.launcher.namespace)
    return any(c.type in ("Failed", "FailureTarget") and c.status == "True"
               for c in job.status.conditions or [])


def test_an_oom_item_is_named_with_the_memory_limit(k8s_cluster):
    tenant = make_tenant(k8s_cluster, "poison")
    with clean_process_env():
        # retries=1: the item is named at its second death (the default, 2, takes a third)
        s = new_session(k8s_cluster, tenant, n=3, idle_timeout=0, memory="64Mi",
                        retries=1).start()
        try:
            t0 = time.monotonic()
            with pytest.raises(PoisonItemError) as info:
                s.map(hog, range(12), chunksize=4, progress=False, timeout=240)
            print(f"OOM item named after {time.monotonic() - t0:.1f} s")
            text = str(info.value)
            assert text.startswith("item 5 (5) was running each time its engine died "
                                   "(2 time(s)"), text
            assert "OOMKilled: the engine needed more than its memory limit of 64Mi" in text
            assert "give the engines more than 64Mi (--memory)" in text
            assert "--retries" not in text

            t0 = time.monotonic()
            results = s.map(hog, range(12), chunksize=4, return_exceptions=True,
                            progress=False, timeout=240)
            print(f"with return_exceptions the map ended after {time.monotonic() - t0:.1f} s")
            assert [r for i, r in enumerate(results) if i != 5] == [i for i in range(12) if i != 5]
            assert isinstance(results[5], PoisonItemError) and "OOMKilled" in str(results[5])

            t0 = time.monotonic()
            assert s.map(abs, range(-3, 3), progress=False, timeout=240) == [3, 2, 1, 0, 1, 2]
            print(f"the next map ran in {time.monotonic() - t0:.1f} s")
            assert not job_failed(k8s_cluster, s)
        finally:
            s.stop()
    assert leftovers(k8s_cluster, tenant.namespace) == NOTHING


def test_an_endless_item_under_timeout_frees_its_pod(k8s_cluster):
    tenant = make_tenant(k8s_cluster, "stuck")
    with clean_process_env():
        s = new_session(k8s_cluster, tenant, n=2, idle_timeout=0).start()
        try:
            t0 = time.monotonic()
            with pytest.raises(KubemagicError) as info:
                s.map(spins, range(6), chunksize=1, timeout=3, progress=False)
            print(f"spins: the error came {time.monotonic() - t0:.1f} s after the map began")
            text = str(info.value)
            assert "the map did not finish within 3" in text, text
            assert "was still running item 2 after the timeout; it was interrupted" in text, text
            # nothing was restarted: the next map runs at once on both engines
            t0 = time.monotonic()
            pods = s.map(pod_of, range(16), chunksize=1, progress=False, timeout=60)
            print(f"spins: the next map (16 x 0.25 s) took {time.monotonic() - t0:.1f} s")
            assert len(set(pods)) == 2, pods

            # without a copy on the other engine (speculate=False): one engine is stuck
            with pytest.raises(KubemagicError) as info:
                s.map(deaf, range(6), chunksize=1, timeout=3, speculate=False, progress=False)
            text = str(info.value)
            assert ("was still running item 2 after the timeout and did not stop when "
                    "interrupted; it was restarted") in text, text
            t0 = time.monotonic()
            assert s.map(pod_of, range(8), chunksize=1, progress=False, timeout=60)
            print(f"deaf: the next map (8 x 0.25 s) took {time.monotonic() - t0:.1f} s "
                  f"on {len(s.ready_ids())} engine(s)")
            back = wait_for(lambda: len(s.ready_ids()) == 2, 120, "the restarted slot's engine")
            print(f"deaf: the slot's new engine was ready {time.monotonic() - t0:.1f} s later")
            assert back and not job_failed(k8s_cluster, s)
        finally:
            s.stop()
    assert leftovers(k8s_cluster, tenant.namespace) == NOTHING
