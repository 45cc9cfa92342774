"""Day-two magics in a real kernel: --cache and %kubemap cache, --background with wait and
cancel, %kubemap output, --no-speculate."""

from __future__ import annotations

import pytest

from ._kernel import Kernel


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    k = Kernel()
    cache = tmp_path_factory.mktemp("cache")
    k.run(f"%load_ext kubemagic\nimport kubemagic\ncache_dir = {str(cache)!r}")
    k.run("%kubemap start -n 2 --backend local")
    yield k
    k.shutdown()


def test_cache_computes_only_new_items_and_is_shown_and_cleared(kernel):
    cell = ("%%kubemap sq range({n}) --cache $cache_dir --out r --no-progress\n"
            "def sq(x):\n    print('computing', x)\n    return x * x\n")
    first = kernel.run(cell.format(n=6))
    assert "0 of 6 items from the cache" in first and first.count("] computing") == 6
    again = kernel.run(cell.format(n=8))
    assert "6 of 8 items from the cache" in again
    assert sorted(line.split()[-1] for line in again.splitlines() if "] computing" in line) == ["6", "7"]
    assert kernel.run("print(r == [x * x for x in range(8)])").strip() == "True"
    shown = kernel.run("%kubemap cache --cache $cache_dir")
    assert "8 result(s)" in shown, shown
    kernel.run("%kubemap cache clear --cache $cache_dir")
    assert "0 result(s)" in kernel.run("%kubemap cache --cache $cache_dir")
    # a changed body is a different function: nothing is reused
    changed = kernel.run(cell.format(n=3).replace("x * x", "x * x + 1"))
    assert "0 of 3 items from the cache" in changed


def test_background_map_binds_its_results_and_wait_raises_its_error(kernel):
    out = kernel.run("%%kubemap nap range(8) --background --out bg\n"
                     "import time\ndef nap(x):\n    time.sleep(0.5)\n    return -x\n")
    assert "runs in the background" in out
    assert kernel.run("print(1 + 1)").strip() == "2"  # the notebook is usable meanwhile
    assert "1 map(s) ended" in kernel.run("%kubemap wait")
    assert kernel.run("print(bg)").strip() == str([-x for x in range(8)])
    kernel.run("%%kubemap bad range(4) --background --out never\n"
               "def bad(x):\n    return 1 / (x - 2)\n")
    err = kernel.run_error("%kubemap wait never")
    assert err["ename"] == "RemoteItemError" and "item 2" in err["evalue"]
    assert kernel.run("print('never' in dir())").strip() == "False"


def test_a_failed_background_map_is_said_in_the_next_cell(kernel):
    kernel.run("%%kubemap bad2 range(4) --background --out nope\n"
               "import time\ndef bad2(x):\n    time.sleep(1)\n    return 1 / (x - 1)\n")
    # this cell starts while the map still runs (its start says nothing) and waits for it
    waited = kernel.run("import time\ns = kubemagic.current()\n"
                        "while any(not m.done() for m in s.maps): time.sleep(0.05)")
    assert "failed" not in waited
    out, errors = kernel.collect(kernel.submit("x = 1"))
    assert not errors
    assert "the background map for 'nope' failed: RemoteItemError: item 1" in out, out
    assert "failed" not in kernel.run("print('once')")  # said once, not in every cell


def test_cancel_stops_a_background_map_and_keeps_the_engines(kernel):
    kernel.run("%%kubemap slow range(100) --background --out gone\n"
               "import time\ndef slow(x):\n    time.sleep(1)\n    return x\n")
    assert "1 map(s) cancelled" in kernel.run("%kubemap cancel")
    kernel.run("import time\ns = kubemagic.current()\n"
               "while any(not m.done() for m in s.maps): time.sleep(0.1)")
    kernel.run("def f(x):\n    return x")
    assert kernel.run("%kubemap f [1, 2] --out ok --no-progress\nprint(ok)").strip() == "[1, 2]"


def test_replay_keeps_one_value_per_name_and_forget_drops_it(kernel):
    kernel.run("w = 1")
    kernel.run("%%kubemap use range(2) --push w --out a --no-progress\ndef use(x):\n    return w\n")
    kernel.run("w = 2")
    kernel.run("%kubemap use range(2) --push w --out b --no-progress")
    status = kernel.run("%kubemap status")
    assert "pushed w (" in status and status.count(" w (") == 1, status
    # a new engine gets the latest value only
    kernel.run("%kubemap scale 3")
    assert kernel.run("print(sorted(set(kubemagic.current().client[:].pull('w', block=True))))"
                      ).strip() == "[2]"
    kernel.run("%kubemap forget w")
    assert "pushed nothing" in kernel.run("%kubemap status")
    kernel.run("%kubemap scale 2")


def test_output_of_one_item_and_no_speculate(kernel):
    kernel.run("%%kubemap talk range(4) --no-speculate --out t --no-progress\n"
               "def talk(x):\n    print('line', x, 'a')\n    print('line', x, 'b')\n    return x\n")
    out = kernel.run("%kubemap output 2")
    assert [line.split("] ")[1] for line in out.strip().splitlines()] == ["line 2 a", "line 2 b"]
    assert kernel.run("print(kubemagic.current().current_map.progress().speculated)").strip() == "0"


def test_a_large_push_is_released_by_forget_and_by_stop_with_the_widget_shown():
    k = Kernel()
    try:
        k.run("%load_ext kubemagic\nimport kubemagic, psutil, gc\n"
              "def rss_mb():\n    gc.collect()\n    return psutil.Process().memory_info().rss // 2**20")
        k.run("%kubemap start -n 2 --backend local")
        base = int(k.run("print(rss_mb())"))
        k.run("big = b'\\x01' * 2**29\nkubemagic.current().push(big=big)\ndel big", timeout=300)
        assert int(k.run("print(rss_mb())")) > base + 450  # the replay log holds it
        k.run("%kubemap forget big")
        assert int(k.run("print(rss_mb())")) < base + 150
        k.run("big = b'\\x01' * 2**29\nkubemagic.current().push(big=big)\ndel big\n"
              "kubemagic.current().widget", timeout=300)
        k.run("%kubemap stop")
        assert int(k.run("print(rss_mb())")) < base + 150
    finally:
        k.shutdown()
