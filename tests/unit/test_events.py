"""kubemagic.events: one typed topic, fanned out; a broken listener breaks nothing."""

from __future__ import annotations

from kubemagic.events import Events, Topic


def test_listeners_get_typed_topics_that_compare_as_their_names():
    seen: list[Topic] = []
    events = Events()

    def broken(topic: Topic) -> None:
        raise RuntimeError("display bug")

    events.subscribe(broken)
    events.subscribe(seen.append)
    events.emit(Topic.ENGINES)
    events.emit(Topic.PROGRESS)
    assert seen == [Topic.ENGINES, Topic.PROGRESS]
    assert seen[0] == "engines" and isinstance(seen[0], Topic)
