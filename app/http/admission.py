"""Admission control: a bounded number of requests run at once, the rest wait, and a queue that stays
slow is shed (CoDel, as in Facebook's and folly's request queues) so admitted requests stay fast.

A fixed in-flight cap cannot do this: at 1,000 connections against one process every request is
admitted, each waits behind all the others, and p99 passes 200 ms. Here at most `concurrency`
requests are being handled; later ones wait in a queue, and how long they waited is the signal:

- normally the queue is served first come, first served, and a wait is short;
- if, over a whole `interval`, the oldest waiter was never younger than `target` (a standing queue,
  not a burst), the queue is overloaded until an interval passes in which it was, or it emptied;
- while overloaded it is served newest first (the oldest are the ones whose callers are about to
  give up), and any waiter that has waited more than twice `target` is refused at once.

Requests also wait before they reach this queue: in the event loop, behind every callback of the
same turn (parsing, other handlers, refusals). `watch_loop` measures that lag every few milliseconds
and it counts in every wait observed, so a lagging loop is overload too. It does not lower the number
of requests handled at once: each admitted request needs a few turns of the loop (its Redis answer
comes back on a later one), so fewer slots while turns are long served fewer requests, not faster
ones (in an open-loop run at 3x here, the old rule took the slots down to one and goodput to 28
answers a second). What a long turn is made of, under
overload, is arrivals: the door (app/http/door.py) refuses those before they are parsed, by
`door_open`.

A refusal is a fast 503 with Retry-After; the caller decides the answer. Nothing here knows HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable


class Admission:
    """Counters: `admitted`, `shed` (refused while queued or on arrival), `queued` (waiting now),
    `active` (being handled now), `overloaded` (the queue's state)."""

    def __init__(
        self,
        *,
        concurrency: int,
        max_waiting: int,
        target: float,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if concurrency < 0 or max_waiting < 0 or target <= 0 or interval <= 0:
            raise ValueError("concurrency and max_waiting must not be negative, target and interval positive")
        self.concurrency = concurrency  # the most handled at once
        self.lag = 0.0  # the event loop's last measured lag, seconds
        self.max_waiting = max_waiting
        self.target = target
        self.slough = 2 * target  # while overloaded, a waiter older than this is refused
        self.interval = interval
        self._clock = clock
        self._waiting: deque[tuple[float, asyncio.Future[bool]]] = deque()
        self._interval_end = 0.0
        self._min_delay = 0.0
        self.overloaded = False
        self._door_engaged_until = 0.0
        self.active = 0
        self.arriving = 0  # let in by the door (app/http/door.py), not yet at the middleware
        self.admitted = 0
        self.shed = 0
        self.shed_at_door = 0  # of `shed`, those refused by the door before they were parsed

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def door_engaged(self, now: float | None = None) -> bool:
        """Whether the door decides at all (`door_open`); while not, it does not even read the request."""
        return self.overloaded or (now if now is not None else self._clock()) < self._door_engaged_until

    def door_open(self) -> bool:
        """Whether the door lets a request in: always, unless it is engaged. It engages while the queue
        is overloaded, and stays engaged for an interval after each refusal: the door keeps the queue
        empty, so CoDel's standing-queue signal alone would open it again and let the excess through, to
        be refused the costly way. Engaged, it lets a request in only while the requests handled,
        waiting and on their way to the middleware (`arriving`, let in earlier in the same turn) leave a
        slot free: what it lets in is served at once, not queued (in an open-loop run at 3x, twice the
        slots gave the same goodput with admitted p99 33 ms instead of 18-21 ms)."""
        now = self._clock()
        if not self.door_engaged(now):
            return True
        if self.active + len(self._waiting) + self.arriving < self.concurrency:
            return True
        self._door_engaged_until = now + self.interval
        return False

    def try_enter(self) -> bool:
        """Admit at once if a slot is free and nobody waits (the common case: no future, no await)."""
        if self.active < self.concurrency and not self._waiting:
            self.active += 1
            self.admitted += 1
            self._observe(0.0, self._clock())
            return True
        return False

    async def enter(self) -> bool:
        """Wait for a slot: True when admitted (call `leave` when done), False when refused."""
        if self.try_enter():
            return True
        now = self._clock()
        self._shed_stale(now)
        if len(self._waiting) >= self.max_waiting:
            self.shed += 1
            return False
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((now, future))
        try:
            return await future
        except asyncio.CancelledError:
            # The caller went away: a slot granted meanwhile goes to the next waiter.
            if future.done() and not future.cancelled() and future.result():
                self.leave()
            raise

    def leave(self) -> None:
        """An admitted request is done: its slot goes to a waiter, if one is still worth serving."""
        self.active -= 1
        now = self._clock()
        self._shed_stale(now)
        waiting = self._waiting
        while waiting and self.active < self.concurrency:
            # The oldest waiter's age is the signal, whichever end is served: served newest first, the
            # requests that get a slot wait little even while a queue stands behind them.
            self._observe(now - waiting[0][0], now)
            queued_at, future = waiting.pop() if self.overloaded else waiting.popleft()
            if future.done():  # cancelled by its caller
                continue
            if self.overloaded and now - queued_at > self.slough:
                self.shed += 1
                future.set_result(False)
                continue
            self.active += 1
            self.admitted += 1
            future.set_result(True)
        if not waiting:
            self._observe(0.0, now)

    async def watch_loop(self, period: float = 0.005) -> None:
        """Measure the event loop's lag every `period`; runs until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + period
            await asyncio.sleep(period)
            self.tick(max(0.0, loop.time() - due))

    def tick(self, lag: float) -> None:
        self.lag = lag
        now = self._clock()
        # Observed even with nobody waiting here: a lagging loop is a queue of its own.
        self._observe(now - self._waiting[0][0] if self._waiting else 0.0, now)
        self._shed_stale(now)

    def _observe(self, delay: float, now: float) -> None:
        """CoDel's signal: the smallest wait seen in an interval (loop lag included); above target
        means a standing queue, not a burst."""
        delay += self.lag
        if now >= self._interval_end:
            self.overloaded = self._min_delay > self.target
            self._min_delay = delay
            self._interval_end = now + self.interval
        elif delay < self._min_delay:
            self._min_delay = delay

    def _shed_stale(self, now: float) -> None:
        """While overloaded, refuse the waiters that have waited too long, oldest first."""
        if not self.overloaded:
            # Every slot held and nothing leaving: the interval still ends, and a standing queue shows.
            if now >= self._interval_end and self._waiting:
                self._observe(now - self._waiting[0][0], now)
            return
        waiting = self._waiting
        while waiting and now - waiting[0][0] > self.slough:
            _, future = waiting.popleft()
            if not future.done():
                self.shed += 1
                future.set_result(False)
