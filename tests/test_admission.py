"""Admission control on its own, with a clock the test moves: slots, the queue, CoDel's overload signal,
newest-first service and the refusal of stale waiters while overloaded, and the event loop's lag."""

from __future__ import annotations

import asyncio

from app.http.admission import Admission

TARGET = 0.005
INTERVAL = 0.1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gate(clock: Clock, concurrency: int = 2, max_waiting: int = 100) -> Admission:
    return Admission(concurrency=concurrency, max_waiting=max_waiting, target=TARGET, interval=INTERVAL, clock=clock)


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_free_slots_admit_at_once_and_a_full_queue_refuses() -> None:
    g = gate(Clock(), concurrency=2, max_waiting=1)
    assert g.try_enter() and g.try_enter()
    assert not g.try_enter()
    waiter = asyncio.ensure_future(g.enter())
    await settle()
    assert g.queued == 1
    assert await g.enter() is False  # the queue is full: refused at once
    g.leave()
    assert await waiter is True
    assert (g.admitted, g.shed, g.active) == (3, 1, 2)


async def test_a_standing_queue_turns_overloaded_serves_newest_first_and_sheds_the_stale() -> None:
    clock = Clock()
    g = gate(clock, concurrency=1)
    assert g.try_enter()
    old = asyncio.ensure_future(g.enter())
    await settle()
    # For a whole interval the oldest waiter never got younger than the target: a standing queue.
    for _ in range(3):
        clock.now += INTERVAL
        g.tick(0.0)
    assert g.overloaded
    new = asyncio.ensure_future(g.enter())
    await settle()
    clock.now += 0.001
    g.leave()  # the slot goes to the newest; the oldest, far past twice the target, is refused
    assert await new is True
    assert await old is False
    assert g.shed == 1


async def test_a_burst_that_drains_quickly_is_not_overload() -> None:
    clock = Clock()
    g = gate(clock, concurrency=1)
    assert g.try_enter()
    waiters = [asyncio.ensure_future(g.enter()) for _ in range(3)]
    await settle()
    for waiter in waiters:
        clock.now += 0.001  # each waits a millisecond or so: under the target
        g.leave()
        assert await waiter is True
    clock.now += INTERVAL
    g.tick(0.0)
    assert not g.overloaded
    assert g.shed == 0


async def test_event_loop_lag_counts_as_waiting_without_taking_slots_away() -> None:
    clock = Clock()
    g = gate(clock, concurrency=64)
    for _ in range(5):
        clock.now += INTERVAL / 2
        g.tick(0.02)  # the loop runs 20 ms late: requests wait there before they reach the queue
    assert g.overloaded
    assert all(g.try_enter() for _ in range(64))  # every slot still serves
    for _ in range(64):
        g.leave()
    for _ in range(5):
        clock.now += INTERVAL / 2
        g.tick(0.0)
    assert not g.overloaded


async def overloaded_gate(clock: Clock, concurrency: int) -> Admission:
    """Every slot taken and a standing queue seen for whole intervals (its waiter refused as stale)."""
    g = gate(clock, concurrency=concurrency)
    assert all(g.try_enter() for _ in range(concurrency))
    stale = asyncio.ensure_future(g.enter())
    await settle()
    for _ in range(3):
        clock.now += INTERVAL
        g.tick(0.0)
    assert g.overloaded
    assert await stale is False
    return g


async def test_the_door_is_open_while_not_overloaded_even_when_every_slot_is_taken() -> None:
    g = gate(Clock(), concurrency=2)
    assert g.try_enter() and g.try_enter()
    g.arriving = 10
    assert g.door_open()


async def test_engaged_the_door_lets_in_only_what_free_slots_take_counting_arrivals() -> None:
    g = await overloaded_gate(Clock(), concurrency=4)
    assert not g.door_open()  # every slot taken
    g.leave()
    g.leave()
    g.arriving = 1
    assert g.door_open()  # 2 handled + 1 on its way: a slot is still free
    g.arriving = 2
    assert not g.door_open()


async def test_the_door_stays_engaged_for_an_interval_after_a_refusal() -> None:
    clock = Clock()
    g = await overloaded_gate(clock, concurrency=2)
    assert not g.door_open()  # refused: engaged until an interval from now
    g.overloaded = False  # the queue the door keeps empty no longer looks overloaded
    clock.now += INTERVAL / 2
    assert g.door_engaged() and not g.door_open()  # still refusing what the slots cannot take
    g.leave()
    assert g.door_open()  # a free slot is taken at once, engaged or not
    assert g.try_enter()
    clock.now += INTERVAL * 1.01
    assert not g.door_engaged()
    assert g.door_open()  # all slots taken, but the excess has stopped: bursts queue again
