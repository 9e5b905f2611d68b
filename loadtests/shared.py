"""Tokens citizens were issued in this run, shared in-process with the scanners that check them.

Two bounded stores: a ring of recent tokens that scanners pick from at random (most scans see a token
minutes old at most), and a queue of tokens set aside to be scanned after they expire, so the expired
path is loaded with tokens the service really issued, without anyone sleeping until they age.
"""

from __future__ import annotations

import random
from collections import deque

from loadtests.checks import Issued


class TokenPool:
    def __init__(self, recent: int = 10_000, aging: int = 2_000) -> None:
        self._recent: list[Issued] = []
        self._capacity = recent
        self._next = 0
        self._aging: deque[Issued] = deque()
        self._aging_capacity = aging

    def add(self, issued: Issued) -> None:
        if len(self._recent) < self._capacity:
            self._recent.append(issued)
        else:
            self._recent[self._next] = issued
            self._next = (self._next + 1) % self._capacity
        # Set aside only while there is room: tokens kept for later must not be pushed out before they expire.
        if len(self._aging) < self._aging_capacity:
            self._aging.append(issued)

    def __len__(self) -> int:
        return len(self._recent)

    def pick(self, rng: random.Random) -> Issued | None:
        return self._recent[rng.randrange(len(self._recent))] if self._recent else None

    def take_expired(self, now: int) -> Issued | None:
        """The oldest set-aside token if it has expired by now (tokens are set aside in issue order)."""
        if self._aging and self._aging[0].exp < now:
            return self._aging.popleft()
        return None

    def clear(self) -> None:
        self._recent.clear()
        self._aging.clear()
        self._next = 0
