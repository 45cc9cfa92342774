"""The client side of item output: growing stream text -> lines -> what the cell shows."""

from __future__ import annotations

from kubemagic.itemlog import Line, OutputLog, TaskOutput, format_line, parse_line
from kubemagic.remote import item_mark

M3, M12 = item_mark(3), item_mark(12)
TEXT = f"{M3}hello\n{M3}world\nuntagged\n{M12}last one"


def test_partial_lines_wait_for_their_newline():
    task = TaskOutput()
    assert task.feed(1, "stdout", f"{M3}hel") == []
    assert task.feed(1, "stdout", f"{M3}hello\n{M3}wor") == [Line(3, 1, "stdout", "hello")]
    assert task.feed(1, "stdout", f"{M3}hello\n{M3}world\n") == [Line(3, 1, "stdout", "world")]


def test_the_same_text_again_yields_nothing():
    task = TaskOutput()
    first = task.feed(0, "stdout", TEXT)
    assert len(first) == 3 and task.feed(0, "stdout", TEXT) == []


def test_marks_split_across_feeds_are_read_whole():
    task = TaskOutput()
    lines = []
    for end in range(len(TEXT) + 1):  # one character more per poll
        lines += task.feed(0, "stdout", TEXT[:end])
    lines += task.flush()
    assert lines == [Line(3, 0, "stdout", "hello"), Line(3, 0, "stdout", "world"),
                     Line(None, 0, "stdout", "untagged"), Line(12, 0, "stdout", "last one")]


def test_flush_yields_the_unfinished_lines_once():
    task = TaskOutput()
    task.feed(2, "stdout", f"{M3}done\n{M3}no newline")
    task.feed(2, "stderr", f"{M12}err")
    assert task.flush() == [Line(3, 2, "stdout", "no newline"), Line(12, 2, "stderr", "err")]
    assert task.flush() == []


def test_streams_are_split_independently():
    task = TaskOutput()
    assert task.feed(0, "stdout", f"{M3}out ") == []
    assert task.feed(0, "stderr", f"{M3}err\n") == [Line(3, 0, "stderr", "err")]
    assert task.feed(0, "stdout", f"{M3}out line\n") == [Line(3, 0, "stdout", "out line")]


def test_lines_without_a_valid_mark_are_untagged():
    assert parse_line(0, "stdout", "plain") == Line(None, 0, "stdout", "plain")
    assert parse_line(0, "stdout", "\x1e12 no end") == Line(None, 0, "stdout", "\x1e12 no end")
    assert parse_line(0, "stdout", "\x1eab\x1fx") == Line(None, 0, "stdout", "\x1eab\x1fx")
    assert parse_line(0, "stdout", "\x1e\x1fx") == Line(None, 0, "stdout", "\x1e\x1fx")
    assert parse_line(0, "stdout", "\x1e²\x1fx").index is None
    assert parse_line(0, "stdout", f"{M12}") == Line(12, 0, "stdout", "")
    assert parse_line(0, "stdout", f"{M12}{M3}x") == Line(12, 0, "stdout", f"{M3}x")


def test_format_names_item_engine_and_stderr():
    assert format_line(Line(17, 2, "stdout", "hi")) == "[item 17 · engine 2] hi"
    assert format_line(Line(17, 2, "stderr", "oops")) == "[item 17 · engine 2 · stderr] oops"
    assert format_line(Line(None, 0, "stdout", "body")) == "[engine 0] body"


def test_the_cell_gets_at_most_cap_lines_then_one_held_back_line():
    log = OutputLog(cap=3)
    shown = log.add(Line(i // 2, 0, "stdout", f"line {i}") for i in range(2))
    shown += log.add(Line(i // 2, 1, "stdout", f"line {i}") for i in range(2, 6))
    assert shown == ["[item 0 · engine 0] line 0", "[item 0 · engine 0] line 1",
                     "[item 1 · engine 1] line 2"]
    assert log.add([Line(9, 0, "stderr", "late")]) == []
    assert len(log.lines) == 7 and log.held_back == 4
    notice = log.held_back_notice()
    assert notice is not None and "4 more lines" in notice
    assert "%kubemap output" in notice


def test_no_held_back_line_when_the_cell_saw_everything():
    log = OutputLog()
    assert log.add([Line(0, 0, "stdout", "only")]) == ["[item 0 · engine 0] only"]
    assert log.held_back == 0 and log.held_back_notice() is None
    assert OutputLog().cap == 200


def test_each_items_lines_keep_their_order():
    log = OutputLog(cap=0)
    a, b = TaskOutput(), TaskOutput()  # two chunks on two engines, polled in turns
    text_a = "".join(f"{item_mark(0)}a{i}\n" for i in range(5))
    text_b = "".join(f"{item_mark(1)}b{i}\n" for i in range(5))
    for end in [*range(0, len(text_a), 4), len(text_a)]:
        log.add(a.feed(0, "stdout", text_a[:end]))
        log.add(b.feed(1, "stdout", text_b[:end]))
    assert [line.text for line in log.for_item(0)] == [f"a{i}" for i in range(5)]
    assert [line.text for line in log.for_item(1)] == [f"b{i}" for i in range(5)]
    assert log.held_back == 10
