"""Risk areas indexed for fast look-up of an area's level at a moment.

Matching (GB/T 2260 six-digit codes, ``PPCCDD``): a risk designation on a district code (``500103``)
matches arrivals with exactly that code; one on a city-level code (``500100``, district ``00``) matches
every arrival from that city (``5001xx``); one on a province-level code (``500000``) every arrival from
that province. An arrival recorded only at city level (``500100``, as telecom data often is) matches
city- and province-level designations, not a district's: flagging a whole city because one district
is at risk would be far wider than the policy.

Levels over time: each area code's records become a timeline. Where several records of one code
overlap, the one that started last wins (a new ``low`` record lowers an area even if the old ``high``
record was never closed); records that start together resolve to the higher level. Where an arrival
matches several codes (district, city, province), the highest of their levels applies.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from typing import Final

from .records import RISK_LEVELS, RiskArea

_RANK: Final[dict[str | None, int]] = {None: 0, "low": 1, "medium": 2, "high": 3}
_FOREVER: Final = 1 << 62

# A timeline: segment start moments (ascending) and the level from each start until the next.
Timeline = tuple[tuple[int, ...], tuple[str | None, ...]]
_EMPTY: Final[Timeline] = ((), ())
_MEMO_CAP: Final = 200_000


def _check_code(code: str) -> None:
    if len(code) != 6 or not code.isdigit():
        raise ValueError(f"area code must be 6 digits, got {code!r}")


def area_prefix(code: str) -> str:
    """The prefix an arrival's area code must start with to match a risk area on ``code``.

    For database queries: a change to risk area ``code`` affects arrivals ``LIKE prefix || '%'``.
    """
    _check_code(code)
    if code[2:] == "0000":
        return code[:2]
    if code[4:] == "00":
        return code[:4]
    return code


def _match_keys(code: str) -> tuple[str, ...]:
    city = code[:4] + "00"
    province = code[:2] + "0000"
    keys = [code]
    if city != code:
        keys.append(city)
    if province != city:
        keys.append(province)
    return tuple(keys)


def _timeline(records: list[RiskArea]) -> Timeline:
    points = sorted({r.valid_from for r in records} | {r.valid_until for r in records if r.valid_until})
    starts: list[int] = []
    levels: list[str | None] = []
    for point in points:
        best: RiskArea | None = None
        for r in records:
            if r.valid_from <= point < (r.valid_until or _FOREVER) and (
                best is None or (r.valid_from, _RANK[r.level]) > (best.valid_from, _RANK[best.level])
            ):
                best = r
        level = best.level if best else None
        if not levels or levels[-1] != level:
            starts.append(point)
            levels.append(level)
    return tuple(starts), tuple(levels)


def _merge(timelines: list[Timeline]) -> Timeline:
    points = sorted({s for starts, _ in timelines for s in starts})
    starts: list[int] = []
    levels: list[str | None] = []
    for point in points:
        level: str | None = None
        for t_starts, t_levels in timelines:
            i = bisect_right(t_starts, point) - 1
            if i >= 0 and _RANK[t_levels[i]] > _RANK[level]:
                level = t_levels[i]
        if not levels or levels[-1] != level:
            starts.append(point)
            levels.append(level)
    return tuple(starts), tuple(levels)


class RiskAreaIndex:
    """Built once from every risk-area record; answers look-ups without I/O.

    Rebuild it when risk areas change; the only state it adds after building is a memo of merged
    timelines per arrival code.
    """

    __slots__ = ("_by_code", "_merged", "size")

    def __init__(self, areas: Iterable[RiskArea] = ()) -> None:
        grouped: dict[str, list[RiskArea]] = {}
        size = 0
        for area in areas:
            _check_code(area.area_code)
            if area.level not in RISK_LEVELS:
                raise ValueError(f"risk area {area.area_code}: unknown level {area.level!r}")
            if area.valid_until is not None and area.valid_until <= area.valid_from:
                raise ValueError(f"risk area {area.area_code}: valid_until is not after valid_from")
            grouped.setdefault(area.area_code, []).append(area)
            size += 1
        self._by_code: dict[str, Timeline] = {code: _timeline(rs) for code, rs in grouped.items()}
        # Arrival code -> merged timeline of every code it matches, filled on first use.
        self._merged: dict[str, Timeline] = {}
        self.size = size

    def timeline(self, arrival_code: str) -> Timeline:
        """The level timeline that applies to an arrival from ``arrival_code``."""
        merged = self._merged.get(arrival_code)
        if merged is not None:
            return merged
        _check_code(arrival_code)
        found = [self._by_code[k] for k in _match_keys(arrival_code) if k in self._by_code]
        if not found:
            merged = _EMPTY
        elif len(found) == 1:
            merged = found[0]
        else:
            merged = _merge(found)
        # Six-digit codes bound the memo; the cap keeps a flood of odd codes from growing it further.
        if len(self._merged) < _MEMO_CAP:
            self._merged[arrival_code] = merged
        return merged

    def level_at(self, arrival_code: str, at: int) -> str | None:
        """The risk level that applies to an arrival from ``arrival_code`` at moment ``at``."""
        starts, levels = self.timeline(arrival_code)
        i = bisect_right(starts, at) - 1
        return levels[i] if i >= 0 else None
