"""kubemagic.idle: when a fleet counts as idle."""

from __future__ import annotations

import asyncio

from kubemagic.idle import IdleWatch


def test_due_after_the_timeout_and_touch_restarts_the_clock():
    w = IdleWatch(10, busy=lambda: False, park=lambda: None)
    start = w._last
    assert not w.due(start + 9.9) and w.due(start + 10)
    w.touch()
    assert not w.due(start + 10) or w._last > start


def test_parks_once_when_idle_never_while_busy():
    parked = []
    busy = {"now": True}
    w = IdleWatch(0.2, busy=lambda: busy["now"], park=lambda: parked.append(1))

    async def scenario():
        task = asyncio.ensure_future(w.run())
        await asyncio.sleep(0.5)          # a long map: never parked
        assert parked == []
        busy["now"] = False
        await asyncio.sleep(0.5)          # idle for the timeout: parked, once per timeout
        assert 1 <= len(parked) <= 2
        w.stop()
        await asyncio.wait_for(task, 1)

    asyncio.run(scenario())
