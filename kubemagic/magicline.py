"""Split a ``%kubemap`` line into Python expressions and options, with Python's tokenizer.

IPython's argument parsing splits on spaces like a shell, so ``%%kubemap f [1, 4, 9]`` or
``%%kubemap f zip(a, b)`` used to fail. Here the options start at the first top-level
(outside brackets and strings) ``-x``/``--name`` that names a known option; what comes
before is cut into FUNC and ITERABLE at the one top-level space where both halves are
valid Python expressions. Pure functions, no IPython.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass

from .errors import UsageError

_OPTION = re.compile(r"(-[a-zA-Z]|--[a-zA-Z][\w-]*)(?=\s|=|$)")


@dataclass(frozen=True)
class Line:
    """A magic line: the text before the options, and the options for argparse."""

    head: str
    options: str


def _tokens(text: str) -> list[tokenize.TokenInfo]:
    """Tokens of one line; an unfinished bracket or string ends the list early."""
    out = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER):
                continue
            out.append(tok)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return out


def _top_level_offsets(text: str) -> list[tuple[int, int]]:
    """(start, end) column offsets of the tokens outside any bracket."""
    depth, spans = 0, []
    for tok in _tokens(text):
        closing = tok.type == tokenize.OP and tok.string in ")]}"
        if closing:
            depth -= 1
        if depth == 0:
            spans.append((tok.start[1], tok.end[1]))
        if tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
    return spans


def split_options(line: str, flags: frozenset[str]) -> Line:
    """Cut ``line`` where its options begin: the first top-level ``--name`` (nobody
    writes minus-minus in Python) or ``-x`` in ``flags`` that follows a space (so
    ``xs -1``, ``a - b`` or ``a[-1:]`` stay expressions); an unknown ``--name`` then
    gets argparse's "unrecognized arguments", not a puzzling NameError."""
    text = line.strip()
    for start, _ in _top_level_offsets(text):
        if start == 0 or not text[start - 1].isspace():
            continue
        m = _OPTION.match(text, start)
        if m and (m.group(1).startswith("--") or m.group(1) in flags):
            return Line(text[:start].strip(), text[start:])
    return Line(text, "")


def _is_expression(text: str) -> bool:
    try:
        ast.parse(text, mode="eval")
    except SyntaxError:
        return False
    return True


def split_func_iterable(head: str) -> tuple[str, str]:
    """FUNC and ITERABLE: the one top-level space where both sides are expressions."""
    text = head.strip()
    if not text:
        raise UsageError("%%kubemap needs FUNC and ITERABLE before the options",
                         fix="e.g. %%kubemap score xs -n 4 --out results")
    cuts = []
    previous_end = None
    for start, end in _top_level_offsets(text):
        if previous_end is not None and start > previous_end:
            left, right = text[:previous_end], text[start:]
            if _is_expression(left) and _is_expression(right):
                cuts.append((left.strip(), right.strip()))
        previous_end = end
    if len(cuts) == 1:
        return cuts[0]
    if not cuts:
        raise UsageError(
            f"could not read FUNC and ITERABLE from {text!r}: it must be two Python "
            "expressions separated by a space",
            fix="e.g. %%kubemap score xs, %%kubemap f [1, 4, 9], %%kubemap f zip(a, b), "
            "%%kubemap 'lambda x: x + 1' range(10)",
        )
    options = "; ".join(f"FUNC {f!r}, ITERABLE {i!r}" for f, i in cuts)
    raise UsageError(
        f"{text!r} can be read as two expressions in more than one way ({options})",
        fix="put brackets around the one you mean, e.g. %%kubemap (f) (a - b)",
    )


def literal_string(expr: str) -> str | None:
    """The value of ``expr`` if it is a single string literal, else None."""
    try:
        node = ast.parse(expr, mode="eval").body
    except SyntaxError:
        return None
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None
