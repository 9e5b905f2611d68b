"""Whether a dependency answers, as the last attempt found it: one log line when that changes, and a
short pause after a failure so a dead dependency is not retried by every request (no retry storm)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from cache.breaker import Breaker

log = logging.getLogger(__name__)


class DependencyState:
    """`up` as last seen; `changes` counts transitions to down, `failures` every failed attempt.

    `failed` opens a breaker for `pause_seconds`: callers check `should_try` and answer 503 at once
    meanwhile. After the pause the next caller tries again; a success closes it.
    """

    def __init__(self, name: str, *, pause_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._clock = clock
        self._breaker = Breaker(pause_seconds, clock=clock)
        self.up = True
        self.down_since: float | None = None
        self.changes = 0
        self.failures = 0

    @property
    def should_try(self) -> bool:
        return self._breaker.closed

    def failed(self, reason: str) -> None:
        self.failures += 1
        self._breaker.trip()
        if self.up:
            self.up = False
            self.down_since = self._clock()
            self.changes += 1
            # One line per outage, not per request: the requests it fails are counted in /metrics.
            log.warning("%s unavailable (%s); answering 503 for what needs it until it is back", self.name, reason)

    def succeeded(self) -> None:
        if self.up:
            return
        self._breaker.reset()
        self.up = True
        down_for = self._clock() - (self.down_since or self._clock())
        self.down_since = None
        log.warning("%s available again after %.1f s", self.name, down_for)
