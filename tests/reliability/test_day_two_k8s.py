"""Day-two features on engine pods: prints tagged by item, an adaptive fleet, a poison item."""

from __future__ import annotations

import time

import pytest

from kubemagic.errors import SessionError

from ._support import NOTHING, clean_process_env, engine_pods, leftovers, make_tenant, new_session

pytestmark = pytest.mark.cluster

# as if defined in a notebook (__main__): shipped by value to the pods
CODE = '''
import os, sys, time
def chatty(x):
    print("hello from", x)
    print("careful", x, file=sys.stderr)
    return x * 2
def nap(x):
    time.sleep(0.2)
    return x
def poison(x):
    if x == 5:
        os._exit(137)          # what an out-of-memory kill looks like from inside
    return x
'''


def notebook_functions() -> dict:
    namespace = {"__name__": "__main__"}
    exec(CODE, namespace)
    return namespace


def test_prints_adapt_and_a_poison_item_on_pods(k8s_cluster):
    tenant = make_tenant(k8s_cluster, "daytwo")
    fns = notebook_functions()
    with clean_process_env():
        s = new_session(k8s_cluster, tenant, n=1, idle_timeout=0).start()
        try:
            handle = s.map_async(fns["chatty"], range(6), chunksize=2)
            assert handle.result(timeout=120) == [0, 2, 4, 6, 8, 10]
            lines = handle.output.log.lines
            assert sorted(l.index for l in lines if l.stream == "stdout") == list(range(6))
            assert [l.text for l in handle.output.log.for_item(3)] in (
                ["hello from 3", "careful 3"], ["careful 3", "hello from 3"])

            s.adapt(1, 3)
            peak = 0
            handle = s.map_async(fns["nap"], range(120))
            while not handle.done():
                peak = max(peak, len(engine_pods(k8s_cluster, tenant.namespace, s.cluster_id)))
                time.sleep(0.2)
            assert handle.result() == list(range(120)) and peak == 3
            deadline = time.monotonic() + 90
            while s.n != 1 or len(s.ready_ids()) != 1:
                assert time.monotonic() < deadline, "the adaptive fleet did not shrink to 1"
                time.sleep(0.5)

            s.scale(2)
            with pytest.raises(SessionError, match=r"item 5 \(5\) was running each time"):
                s.map(fns["poison"], range(12), chunksize=4, progress=False)
            # the Job replaced the pods: the next map runs
            assert s.map(abs, [-1, -2], progress=False, timeout=120) == [1, 2]
        finally:
            s.stop()
    assert leftovers(k8s_cluster, tenant.namespace) == NOTHING
