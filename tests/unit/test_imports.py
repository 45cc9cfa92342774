"""kubemagic.imports: the statements that rebuild a block's imports on an engine."""

from __future__ import annotations

import json
import os.path
from kubemagic.imports import import_statements, recorded_imports


def test_import_statements_keep_aliases_and_from_imports():
    before = {"x": 1}
    after = {"x": 1, "jj": json, "pth": os.path, "dumps": json.dumps, "y": 2}
    code = import_statements(before, after, ["json", "os"]).splitlines()
    assert "import json as jj" in code
    assert "import posixpath as pth" in code
    assert "from json import dumps" in code
    assert not any("y" in line.split() for line in code)


def test_import_statements_prefer_the_defining_module():
    import fractions
    import statistics

    code = import_statements({}, {"Fraction": fractions.Fraction}, ["fractions", "statistics"])
    assert code == "from fractions import Fraction"
    assert statistics.Fraction is fractions.Fraction  # the trap this avoids


def test_recorded_imports_sends_what_the_block_bound():
    sent: list[str] = []
    namespace = {"recorded": recorded_imports, "sent": sent}
    exec("import sys\n"
         "with recorded(sys._getframe(0), sent.append, quiet=True):\n"
         "    import json as jj\n"
         "    from json import dumps\n", namespace)
    assert sent == ["import json as jj\nfrom json import dumps"]
