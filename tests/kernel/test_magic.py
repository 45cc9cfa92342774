"""%%kubemap in a real kernel on local engines: results, reuse, replay, errors."""

from __future__ import annotations

import pytest

from ._kernel import Kernel


@pytest.fixture(scope="module")
def kernel():
    k = Kernel()
    k.run("%load_ext kubemagic\nimport kubemagic\nxs = list(range(30))\nweights = 3")
    k.run("%%kubemap score xs -n 2 --backend local --push weights --out results\n"
          "import math as m\n"
          "def score(x):\n    return m.sqrt(x) * weights\n")
    yield k
    k.shutdown()


def test_results_in_order(kernel):
    out = kernel.run("import math\nprint(results == [math.sqrt(x) * 3 for x in xs])")
    assert out.strip() == "True"


def test_second_cell_reuses_engines(kernel):
    before = kernel.run("print(kubemagic.current().cluster_id, sorted(kubemagic.current().ready_ids()))")
    kernel.run("%%kubemap score xs --out again\npass\n")
    after = kernel.run("print(kubemagic.current().cluster_id, sorted(kubemagic.current().ready_ids()))")
    assert before == after
    assert kernel.run("print(again == results)").strip() == "True"


def test_unordered_and_chunksize_and_return_exceptions(kernel):
    kernel.run("%%kubemap inv xs --unordered --chunksize 7 --return-exceptions --out inv_r\n"
               "def inv(x):\n    return 1 / x\n")
    out = kernel.run("errs = [r for r in inv_r if isinstance(r, kubemagic.RemoteItemError)]\n"
                     "print(len(inv_r), len(errs), errs[0].index, errs[0].ename)")
    assert out.split() == ["30", "1", "0", "ZeroDivisionError"]


def test_failing_item_raises_one_error_naming_the_item(kernel):
    err = kernel.run_error("%%kubemap boom xs --out nope\n"
                           "def boom(x):\n    if x == 17:\n        raise ValueError('bad 17')\n"
                           "    return x\n")
    assert err["ename"] == "RemoteItemError"
    assert "item 17 (17) raised ValueError: bad 17" in err["evalue"]
    assert "remote traceback" in err["evalue"] and "how to fix" in err["evalue"]
    # the remote traceback starts at the user's function, not in kubemagic's chunk runner
    assert "in boom" in err["evalue"] and "remote.py" not in err["evalue"]
    # one clear message, no traceback into kubemagic's internals
    assert not any("dispatch.py" in line for line in err["traceback"])


def test_scale_up_replays_pushes_and_imports_to_new_engines(kernel):
    kernel.run("%kubemap scale 3")
    out = kernel.run(
        "s = kubemagic.current()\n"
        "r = s.map(lambda i: (weights, m.__name__, score(4)), range(60), progress=False)\n"
        "print(len(s.ready_ids()), set(r))")
    assert out.strip() == "3 {(3, 'math', 6.0)}"
    # every engine, including the one that joined, has the names without a new push
    out = kernel.run("print(s.client[:].apply_sync(lambda: (weights, m.sqrt(9))))")
    assert out.strip() == "[(3, 3.0), (3, 3.0), (3, 3.0)]"
    kernel.run("%kubemap scale 2")
    assert kernel.run("print(len(s.ready_ids()))").strip() == "2"


def test_sync_imports_keeps_aliases(kernel):
    kernel.run("with kubemagic.current().sync_imports(quiet=True):\n"
               "    import json as jj\n    from os import path as pth\n")
    out = kernel.run("print(kubemagic.current().client[:].apply_sync(lambda: (jj.dumps(1), pth.sep)))")
    assert out.strip() == "[('1', '/'), ('1', '/')]"


def test_status_line_magic(kernel):
    out = kernel.run("%kubemap status")
    assert "local backend, running, 2/2 engines ready" in out
    assert "pushed weights (0.0 MB)" in out, out


BAD_INPUT = [
    # (cell, expected error class, words the message must contain)
    ("%%kubemap score nosuch --out r\npass\n", "UsageError", "'nosuch' is not defined"),
    ("%%kubemap nofunc xs --out r\npass\n", "UsageError", "'nofunc' is not defined"),
    ("%%kubemap score 42 --out r\npass\n", "UsageError", "not iterable"),
    ("%%kubemap score xs --push nope,weights\npass\n", "UsageError", "'nope'"),
    ("%%kubemap score xs\ndef broken(:\n", "UsageError", "syntax error in the cell body"),
    ("%%kubemap score xs --bogus-flag\npass\n", "UsageError", "unrecognized arguments"),
    ("%%kubemap score xs -n 0\npass\n", "UsageError", "at least 1"),
    ("%%kubemap score xs -n -3\npass\n", "UsageError", "at least 1"),
    ("%%kubemap score xs --chunksize zero\npass\n", "UsageError", "chunksize"),
    ("%%kubemap score xs --retries -1\npass\n", "UsageError", "retries"),
    ("%%kubemap score xs --backend local --image foo:1\npass\n", "SessionError", "--image"),
    ("%%kubemap score xs --node-selector gpu=true\npass\n", "SessionError",
     "different --node-selector"),
    ("%%kubemap score xs --env MODE=fast\npass\n", "SessionError", "different --env"),
    ("%%kubemap score xs --env 1BAD=x\npass\n", "UsageError", "--env name '1BAD'"),
    ("%%kubemap score xs --curve-ish\npass\n", "UsageError", "unrecognized arguments"),
    ("import threading\nlock = threading.Lock()\n%kubemap widget", None, None),
    ("%%kubemap score xs --push lock\npass\n", "UsageError", "cannot send"),
    ("%kubemap scale -3", "UsageError", "at least 0"),
    ("%kubemap scale lots", "UsageError", "not a whole number"),
    ("%kubemap frobnicate", "UsageError", "unknown subcommand"),
]


@pytest.mark.parametrize("cell,ename,words", BAD_INPUT)
def test_bad_input_gives_one_clear_error_and_session_stays_usable(kernel, cell, ename, words):
    if ename is None:
        kernel.run(cell)
        return
    err = kernel.run_error(cell)
    assert err["ename"] == ename, err
    assert words in err["evalue"], err["evalue"]
    # the kernel is alive and the same engines still map
    out = kernel.run("print(kubemagic.current().state, kubemagic.current().map(abs, [-5], progress=False))")
    assert out.strip() == "running [5]"


def test_engine_options_of_the_local_backend_reach_its_engines():
    """--env is declared by the local backend too: a new fleet's engines get it."""
    k = Kernel()
    try:
        k.run("%load_ext kubemagic")
        k.run("%%kubemap getenv ['MODE', 'EXTRA'] -n 1 --backend local "
              "--env 'MODE=fast,EXTRA=a b' --out seen\n"
              "import os\ndef getenv(name):\n    return os.environ.get(name)\n")
        assert k.run("print(seen)").strip() == "['fast', 'a b']"
        # the same environment in another order is the same fleet; a GPU is not
        k.run("%kubemap getenv ['MODE'] --env 'EXTRA=a b,MODE=fast' --out again")
        assert k.run("print(again)").strip() == "['fast']"
        err = k.run_error("%kubemap getenv ['MODE'] --gpu 1")
        assert err["ename"] == "SessionError" and "different --gpu\n" in err["evalue"], err
    finally:
        k.shutdown()


def test_empty_iterable_and_generator(kernel):
    kernel.run("%%kubemap score [] --out empty\npass\n")
    kernel.run("%%kubemap score '(x for x in range(4))' --out gen\npass\n")
    assert kernel.run("print(empty, gen)").strip() == "[] [0.0, 3.0, 4.242640687119286, 5.196152422706632]"
    kernel.run("%%kubemap score (x for x in range(4)) --out gen2\npass\n")  # no quotes needed
    assert kernel.run("print(gen2 == gen)").strip() == "True"


# FUNC and ITERABLE are Python expressions (issue: IPython's shell-like splitting broke on the
# spaces a Python programmer types). Each row: the magic line's head, and the expected results.
EXPRESSIONS = [
    ("sq [1, 4, 9]", [1, 16, 81]),
    ("sq range(0, 4)", [0, 1, 4, 9]),
    ("add2 zip(a, b)", [11, 22]),
    ("len 'abc'", [1, 1, 1]),                       # a string literal is the string
    ("'lambda x: x + 1' [1, 2]", [2, 3]),           # quoted lambda, as before
    ("lambda x: x * 10 [1, 2]", [10, 20]),          # unquoted lambda
    ("sq xs[-3:]", [27 ** 2, 28 ** 2, 29 ** 2]),
    ("sq {3: 'x', 4: 'y'}", [9, 16]),
    ("sq [x for x in range(3) if x]", [1, 4]),
    ("ns.f (1, 2)", [2, 4]),                         # attribute access
    ("π [1]", [3.14]),                               # unicode names
    ("sq xs[-1:] -n 2", [29 ** 2]),                  # options after an expression
]


@pytest.mark.parametrize("head,expected", EXPRESSIONS, ids=[h for h, _ in EXPRESSIONS])
def test_func_and_iterable_are_python_expressions(kernel, head, expected):
    kernel.run("import types\na, b = [1, 2], [10, 20]\n"
               "def sq(x):\n    return x * x\n"
               "def add2(p):\n    return p[0] + p[1]\n"
               "ns = types.SimpleNamespace(f=lambda x: 2 * x)\n"
               "def π(x):\n    return 3.14 * x\n")
    kernel.run(f"%%kubemap {head} --out expr_r\n# {head}\n")
    assert kernel.run("print(expr_r)").strip() == repr(expected)
    kernel.run(f"%kubemap {head} --out expr_line")  # the line magic: no body needed
    assert kernel.run("print(expr_line)").strip() == repr(expected)


@pytest.mark.parametrize("line,words", [
    ("%kubemap f (a) (b)", "more than one way"),
    ("%kubemap sq xs --out 1bad", "not a variable name"),
    ("%kubemap sq xs --out for", "not a variable name"),
    ("%kubemap sq xs --out obj.attr", "not a variable name"),
    ("%kubemap status xs", "write %kubemap (status) ITERABLE"),
    ("%kubemap stauts", "did you mean %kubemap status"),
    ("%kubemap sq xs --bogus", "unrecognized arguments"),
])
def test_expression_line_errors(kernel, line, words):
    err = kernel.run_error(line)
    assert err["ename"] == "UsageError" and words in err["evalue"], err["evalue"]


def test_run_all_stops_at_a_failing_kubemap_line(kernel):
    ids = [kernel.kc.execute("%kubemap sq nosuchname"), kernel.kc.execute("print('after')")]
    statuses = []
    for msg_id in ids:
        while True:
            reply = kernel.kc.get_shell_msg(timeout=60)
            if reply["parent_header"].get("msg_id") == msg_id:
                statuses.append(reply["content"]["status"])
                break
    assert statuses == ["error", "aborted"]


def test_notebook_code_travels_by_value(kernel):
    """Functions from earlier cells with the globals, helpers and modules they use, and
    notebook classes as items and results, without --push or a cell body."""
    kernel.run("import statistics as st\nOFFSET = 100\n"
               "def helper(x):\n    return x + OFFSET\n"
               "class Pt:\n    def __init__(self, x):\n        self.x = x\n"
               "    def __repr__(self):\n        return f'Pt({self.x})'\n"
               "def uses_all(p):\n    return Pt(helper(p.x) + st.mean([0, 2]))\n"
               "pts = [Pt(i) for i in range(5)]\n")
    kernel.run("%kubemap uses_all pts --out moved")
    assert kernel.run("print(moved)").strip() == "[Pt(101), Pt(102), Pt(103), Pt(104), Pt(105)]"
    # a closure and a lambda over a notebook variable
    kernel.run("def make(k):\n    return lambda v: v * k + OFFSET\ntimes3 = make(3)\n")
    kernel.run("%kubemap times3 [1, 2] --out closure")
    assert kernel.run("print(closure)").strip() == "[103, 106]"
    # the engine's own namespace stays visible: pushes and globals()
    kernel.run("big = list(range(200_000))\nkubemagic.current().push(big=big)\n"
               "def from_engine(i):\n    return (len(globals()['big']), big[i])\n")
    kernel.run("%kubemap from_engine [3] --out seen")
    assert kernel.run("print(seen)").strip() == "[(200000, 3)]"
    # ... and a pushed name is not shipped with the function again
    size = kernel.run("from kubemagic.serialize import _Serializer\n"
                      "print(len(_Serializer.dumps(from_engine)))")
    assert int(size) < 10_000, size
