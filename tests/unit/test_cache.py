"""The result cache: content keys that survive a kernel restart, and crash-safe storage."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import types
from pathlib import Path
from typing import Any

import pytest

from kubemagic import cache as cache_module
from kubemagic.cache import DATABASE_NAME, ResultCache
from kubemagic.cachekey import function_key, item_key, item_keys, module_version
from kubemagic.errors import UsageError
from kubemagic.replay import Entry

REPO = Path(__file__).resolve().parents[2]

#: a notebook's worth of definitions: helpers, recursion, a set global, a frozenset
#: constant, a closure, defaults, a class, a module
NOTEBOOK = """
import json
from dataclasses import dataclass

WORDS = {"alpha", "beta", "gamma", "delta", "epsilon"}
SCALE = 3

@dataclass
class Point:
    x: int
    def norm(self):
        return abs(self.x) * SCALE

def helper(v):
    return v in {"a", "b", "c"}

def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)

def make(offset):
    def inner(v):
        return v + offset
    return inner

shift = make(10)

def f(x, k=2, *, z=(1, 2)):
    return (helper(x), fib(k), len(WORDS), Point(x).norm(), json.dumps(x), shift(x),
            weights, z)
"""


def define(source: str = NOTEBOOK, kernel: int = 1234, blank_lines: int = 0,
           edits: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``source`` as a notebook cell of kernel ``kernel`` would: ``__main__``
    namespace, a per-kernel file name; ``edits`` replace text in the source."""
    for old, new in (edits or {}).items():
        assert old in source
        source = source.replace(old, new)
    ns: dict[str, Any] = {"__name__": "__main__"}
    code = compile("\n" * blank_lines + textwrap.dedent(source),
                   f"/tmp/ipykernel_{kernel}/{kernel * 7}.py", "exec")
    exec(code, ns)
    return ns


LOG = [Entry("execute", "import numpy as np"), Entry("push", {"weights": [1, 2, 3]})]


def key(ns: dict[str, Any], log: list[Entry] = LOG) -> str:
    return function_key(ns["f"], log)


# -- function keys ----------------------------------------------------------------------

def test_same_function_in_a_new_kernel_has_the_same_key():
    first = define(kernel=1234)
    again = define(kernel=98765, blank_lines=7)  # other file name, other line numbers
    assert first["f"].__code__.co_filename != again["f"].__code__.co_filename
    assert key(first) == key(again)
    assert len(key(first)) == 64


def test_key_does_not_depend_on_the_process_hash_seed():
    """Sets iterate in another order in every process: a new kernel must still match."""
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(REPO)!r})
        from tests.unit.test_cache import define, key, item_key
        print(json.dumps([key(define()), item_key(({{"x", "y", "z", "w"}}, 1.5))]))
    """)
    outputs = []
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        done = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO,
                              capture_output=True, text=True, check=True)
        outputs.append(json.loads(done.stdout))
    assert outputs[0] == outputs[1]
    assert outputs[0] == [key(define()), item_key(({"x", "y", "z", "w"}, 1.5))]


@pytest.mark.parametrize("edit", [
    {"return (helper(x)": "return (helper(x + 1)"},  # the body
    {"k=2": "k=3"},  # a default
    {"z=(1, 2)": "z=(1, 3)"},  # a keyword-only default
    {"make(10)": "make(11)"},  # a closure value (of a function it calls)
    {"SCALE = 3": "SCALE = 4"},  # a global used by a method of a class it uses
    {'"beta"': '"bet"'},  # a global set
    {'{"a", "b", "c"}': '{"a", "b", "d"}'},  # a constant of a helper
    {"n - 2": "n - 3"},  # a recursive helper
], ids=["body", "default", "kwdefault", "closure", "global-of-class", "global-set",
        "helper-constant", "recursive-helper"])
def test_a_change_the_function_depends_on_changes_the_key(edit):
    assert key(define(edits=edit)) != key(define())


def test_a_helper_under_a_library_decorator_is_hashed_by_content():
    source = ("import functools\n@functools.lru_cache\ndef g(x):\n    return x + 1\n"
              "def f(x):\n    return g(x)\n")
    assert (function_key(define(source)["f"]) == function_key(define(source, kernel=2)["f"]))
    assert (function_key(define(source)["f"])
            != function_key(define(source, edits={"x + 1": "x + 2"})["f"]))


def test_a_changed_global_value_changes_the_key_without_redefinition():
    ns = define()
    before = key(ns)
    ns["unrelated"] = [1, 2]  # a global the function does not use
    assert key(ns) == before
    ns["WORDS"].add("zeta")
    assert key(ns) != before


def test_pushed_values_count_only_for_names_the_function_uses():
    ns = define()
    base = key(ns)
    assert key(ns, LOG + [Entry("push", {"unrelated": object()})]) == base
    assert key(ns, LOG + [Entry("push", {"weights": [1, 2, 4]})]) != base
    assert key(ns, LOG + [Entry("push", {"weights": [1, 2, 3]})]) == base  # same value
    # a name the function reaches only through a helper counts too
    ns["helper"] = define("def helper(v):\n    return v in table\n")["helper"]
    with_table = LOG + [Entry("push", {"table": [1]})]
    assert key(ns, with_table) != key(ns, LOG + [Entry("push", {"table": [2]})])


def test_a_pushed_name_is_hashed_by_its_pushed_value_not_the_kernels():
    """Engines resolve a pushed name to the pushed value; the kernel's may differ."""
    ns = define()
    ns["weights"] = "kernel value"
    before = key(ns)
    ns["weights"] = "another kernel value"
    assert key(ns) == before


def test_executed_code_always_counts_and_rerunning_a_cell_does_not():
    ns = define()
    base = key(ns)
    assert key(ns, LOG + [Entry("execute", "threshold = 5")]) != base
    assert key(ns, LOG + LOG) == base  # the same cell run again appends the same entries
    # order matters: a later block or push may redefine what an earlier one made
    a, b = Entry("execute", "x = 1"), Entry("execute", "x = 2")
    assert key(ns, [a, b]) != key(ns, [b, a])
    assert key(ns, [a, b, a]) == key(ns, [b, a])  # what the engines hold: x = 1


def test_modules_count_by_name_and_version_not_content():
    import cloudpickle

    assert module_version("json") == module_version("json.decoder")
    assert module_version("json").startswith("python ")
    assert module_version("cloudpickle") == cloudpickle.__version__
    fake = types.ModuleType("json")  # same name, other content: same key
    ns = define()
    before = key(ns)
    ns["json"] = fake
    assert key(ns) == before


def test_callables_other_than_functions_are_keyed_by_their_functions():
    import functools

    ns = define()
    assert (function_key(functools.partial(ns["f"], k=1), LOG)
            == function_key(functools.partial(define(kernel=5)["f"], k=1), LOG))
    assert (function_key(functools.partial(ns["f"], k=1), LOG)
            != function_key(functools.partial(ns["f"], k=2), LOG))


def test_an_unhashable_dependency_is_one_clear_error():
    ns = define()
    ns["SCALE"] = threading.Lock()
    with pytest.raises(UsageError, match="cannot cache this map.*lock") as info:
        key(ns)
    assert "without the cache" in info.value.fix


# -- item keys --------------------------------------------------------------------------

def test_item_keys_tell_apart_what_a_function_could_tell_apart():
    items = [(1,), (1.0,), (True,), ("1",), (b"1",), ((1,),), ([1],), (1, 2), (None,)]
    keys = item_keys(items)
    assert len(set(keys)) == len(items)
    assert all(len(k) == 32 for k in keys)
    assert item_key((1, "a")) == item_key((1, "a"))


def test_item_keys_of_objects_and_sets_are_by_content():
    point = define()["Point"]
    assert item_key((point(3),)) == item_key((define(kernel=7)["Point"](3),))
    assert item_key((point(3),)) != item_key((point(4),))
    assert item_key(({"a", "b"},)) != item_key((frozenset({"a", "b"}),))


def test_an_unpicklable_item_is_one_clear_error():
    with pytest.raises(UsageError, match="the item cannot be turned into bytes"):
        item_key((threading.Lock(),))


# -- storage ----------------------------------------------------------------------------

def test_results_survive_closing_and_reopening(tmp_path):
    keys = item_keys((i,) for i in range(5))
    with ResultCache(tmp_path) as cache:
        assert cache.path == tmp_path / DATABASE_NAME
        assert cache.put_many("f1", {k: {"i": i} for i, k in enumerate(keys[:3])}) == []
        assert cache.put_many("f2", {keys[0]: "other function"}) == []
    with ResultCache(tmp_path) as cache:
        assert cache.get_many("f1", keys) == {k: {"i": i} for i, k in enumerate(keys[:3])}
        assert cache.get_many("f2", keys) == {keys[0]: "other function"}
        assert cache.get_many("unknown", keys) == {}
        assert cache.get_many("f1", []) == {}


def test_many_keys_are_read_in_batches(tmp_path):
    keys = item_keys((i,) for i in range(2500))
    with ResultCache(tmp_path) as cache:
        cache.put_many("f", {k: i for i, k in enumerate(keys) if i % 2})
        got = cache.get_many("f", keys)
    assert got == {k: i for i, k in enumerate(keys) if i % 2}


def test_unpicklable_values_are_reported_not_raised(tmp_path):
    keys = item_keys((i,) for i in range(3))
    with ResultCache(tmp_path) as cache:
        skipped = cache.put_many("f", {keys[0]: 1, keys[1]: threading.Lock(),
                                       keys[2]: (i for i in range(2))})
        assert skipped == [keys[1], keys[2]]
        assert cache.get_many("f", keys) == {keys[0]: 1}
        assert cache.put_many("f", {keys[1]: threading.Lock()}) == [keys[1]]


def test_values_over_the_size_limit_are_reported_not_raised(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "MAX_VALUE_BYTES", 100)
    small, large = item_keys([(1,), (2,)])
    with ResultCache(tmp_path) as cache:
        assert cache.put_many("f", {small: "x", large: "x" * 1000}) == [large]
        assert cache.get_many("f", [small, large]) == {small: "x"}


def test_a_value_that_no_longer_unpickles_counts_as_missing(tmp_path):
    module = types.ModuleType("kubemagic_test_gone")
    exec("class Gone:\n    pass\n", module.__dict__)
    sys.modules[module.__name__] = module
    (k,) = item_keys([(1,)])
    with ResultCache(tmp_path) as cache:
        try:
            cache.put_many("f", {k: module.Gone()})
        finally:
            del sys.modules[module.__name__]
        assert cache.get_many("f", [k]) == {}
        cache.put_many("f", {k: "recomputed"})  # and is overwritten when recomputed
        assert cache.get_many("f", [k]) == {k: "recomputed"}


def test_stats_and_clear(tmp_path):
    keys = item_keys((i,) for i in range(100))
    with ResultCache(tmp_path) as cache:
        assert cache.stats().entries == 0
        cache.put_many("f", {k: "x" * 1000 for k in keys})
        cache.put_many("g", {k: 1 for k in keys[:10]})
        entries, size = cache.stats()
        assert entries == 110
        assert size > 100 * 1000
        cache.clear()
        assert cache.stats().entries == 0
        assert cache.stats().bytes < size
        assert cache.get_many("f", keys) == {}
        cache.put_many("f", {keys[0]: 1})  # usable after a clear
        assert cache.get_many("f", keys) == {keys[0]: 1}


def test_an_unusable_directory_or_file_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(UsageError, match="cannot open the result cache") as info:
        ResultCache(tmp_path / "file")
    assert "writable directory" in info.value.fix
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / DATABASE_NAME).write_bytes(b"garbage " * 1000)
    with pytest.raises(UsageError, match="unreadable") as info:
        ResultCache(tmp_path / "bad")
    assert DATABASE_NAME in info.value.fix


WRITER = """
import sys
sys.path.insert(0, {repo!r})
from kubemagic.cache import ResultCache

cache = ResultCache(sys.argv[1])
for chunk in range(int(sys.argv[3])):
    cache.put_many(sys.argv[2], {{format(chunk * 10 + i, "032x"): (chunk, i) for i in range(10)}})
    print(chunk, flush=True)
"""


def writer(directory: Path, fkey: str, chunks: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER.format(repo=str(REPO)), str(directory), fkey,
         str(chunks)], stdout=subprocess.PIPE, text=True)


def test_chunks_written_before_a_sigkill_stay_readable(tmp_path):
    proc = writer(tmp_path, "f", 10**9)
    assert proc.stdout is not None
    committed = [int(proc.stdout.readline()) for _ in range(3)]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert committed == [0, 1, 2]
    with ResultCache(tmp_path) as cache:
        wanted = [format(n, "032x") for n in range(30)]
        assert cache.get_many("f", wanted) == {format(c * 10 + i, "032x"): (c, i)
                                               for c in range(3) for i in range(10)}
        assert cache.stats().entries % 10 == 0  # whole chunks only
    with contextlib.closing(sqlite3.connect(tmp_path / DATABASE_NAME)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_two_processes_can_write_at_once(tmp_path):
    procs = [writer(tmp_path, name, 100) for name in ("a", "b")]
    for proc in procs:
        out, _ = proc.communicate()
        assert proc.returncode == 0
        assert out.split()[-1] == "99"
    with ResultCache(tmp_path) as cache:
        assert cache.stats().entries == 2000
        assert len(cache.get_many("a", [format(n, "032x") for n in range(1000)])) == 1000
