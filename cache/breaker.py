"""A time-based circuit breaker: after a failure, skip the dependency for a while instead of retrying it."""

from __future__ import annotations

import time
from collections.abc import Callable


class Breaker:
    """Open for `open_seconds` after `trip()`; closed (usable) otherwise.

    There is no separate half-open state: once the window has passed the next call tries the dependency,
    and a new failure opens it again. Callers that were coalesced into one round trip fail together, so
    a dead dependency sees at most one attempt per window from this process per batch.
    """

    __slots__ = ("_clock", "_open_seconds", "_open_until")

    def __init__(self, open_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        if open_seconds < 0:
            raise ValueError("open_seconds must not be negative")
        self._open_seconds = open_seconds
        self._clock = clock
        self._open_until = float("-inf")

    @property
    def closed(self) -> bool:
        return self._clock() >= self._open_until

    def trip(self) -> None:
        self._open_until = self._clock() + self._open_seconds

    def reset(self) -> None:
        self._open_until = float("-inf")
