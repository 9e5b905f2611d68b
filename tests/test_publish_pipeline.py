"""The refresh pipeline's ordering helper: a refresh stopped early leaves no step half-started."""

from __future__ import annotations

import asyncio
import gc
import inspect

from app.statuses.publish import _InOrder


async def test_a_step_cancelled_before_its_turn_is_closed_not_left_unawaited() -> None:
    steps = _InOrder()
    running = asyncio.Event()
    first_step = running.wait()
    second_step = asyncio.sleep(0)
    steps.run(first_step)
    steps.run(second_step)
    await asyncio.sleep(0)  # the first step starts and waits on the event; the second waits its turn

    leftover = steps.cancel()
    results = await asyncio.gather(*leftover, return_exceptions=True)
    gc.collect()  # an unawaited coroutine would be reported here, which the suite turns into an error

    assert all(isinstance(result, asyncio.CancelledError) for result in results)
    assert inspect.getcoroutinestate(first_step) == inspect.CORO_CLOSED
    assert inspect.getcoroutinestate(second_step) == inspect.CORO_CLOSED


async def test_each_step_runs_after_the_one_before_it_ends() -> None:
    steps = _InOrder()
    order: list[str] = []
    release = asyncio.Event()

    async def record(name: str, wait: asyncio.Event | None = None) -> str:
        if wait is not None:
            await wait.wait()
        order.append(name)
        return name

    first = steps.run(record("first", release))
    second = steps.run(record("second"))
    await asyncio.sleep(0)
    assert order == []  # the second waits for the first even though it could run now
    release.set()
    assert list(await asyncio.gather(first, second)) == ["first", "second"]
    assert order == ["first", "second"]
