"""kubemagic.replay: one value per pushed name, in its first place; failed code taken out."""

from __future__ import annotations

from kubemagic.replay import ReplayLog, size_of


def kinds(log: ReplayLog) -> list[tuple[str, object]]:
    return [(e.kind, e.payload) for e in log]


def test_pushing_a_name_again_replaces_its_value_where_it_was_first_pushed():
    log = ReplayLog()
    log.push({"w": 1, "b": 2})
    log.execute("y = w * 2")  # uses w: the new value must stay ahead of this code
    log.push({"w": 3, "c": 4})
    assert kinds(log) == [("push", {"w": 3, "b": 2}), ("execute", "y = w * 2"),
                          ("push", {"c": 4})]
    assert log.summary()["pushed_names"] == ["b", "c", "w"]


def test_a_push_of_only_known_names_adds_no_entry():
    log = ReplayLog()
    log.push({"w": 1})
    log.push({"w": 2})
    assert kinds(log) == [("push", {"w": 2})]


def test_failed_code_is_removed_and_forget_drops_a_name():
    log = ReplayLog()
    log.push({"w": 1, "big": b"x" * 1000})
    bad = log.execute("import not_installed")
    log.remove(bad)
    assert log.summary()["code_blocks"] == 0
    assert log.forget("big") and not log.forget("big")
    assert kinds(log) == [("push", {"w": 1})]
    log.forget("w")
    assert len(log) == 0


def test_sizes_are_cheap_estimates():
    assert size_of(b"x" * 1000) == 1000
    assert size_of("abc") == 3

    class Array:
        nbytes = 8_000_000

    assert size_of(Array()) == 8_000_000
    log = ReplayLog()
    log.push({"a": b"x" * 10, "b": b"y" * 5})
    assert log.summary()["pushed_bytes"] == 15 and log.summary()["sizes"] == {"a": 10, "b": 5}
