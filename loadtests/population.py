"""A synthetic population for load tests: person `i` of any size, computed on demand, never stored.

Each person has a valid GB 11643 resident number, a name, and a situation (the records that give a
colour). Everything follows from `(seed, index)`, so Locust workers on many hosts pick the same people
without sharing a file, and `index_of(number)` inverts the mapping.

How the numbers are laid out: the space of numbers is cut into cells, one per (home region, birth
band), each with room in proportion to that region's population (Chongqing, 2020 census, plus some
people from elsewhere) times that band's share of the age pyramid. A position in the space picks a cell,
a birth date in the band and a sequence number, injectively. Index `i` maps to position
`(i * STRIDE + offset) mod SPACE` with STRIDE coprime with SPACE (a bijection), and STRIDE near
SPACE / golden ratio, so that consecutive indexes land far apart and any prefix 0..N-1 spreads over the
cells in proportion to their size: a realistic age and region mix at any N up to SPACE (~300 million).

The situation of person `i` is drawn from a 64-bit mix of (seed, i) against the configured colour shares,
so changing the shares changes situations but never numbers.

CSV export, one kind per file, as agencies upload them (`POST /v1/batches?kind=K` or
`healthcode load --kind K FILE`):

    python -m loadtests.population --kind population --count 100000 > population.csv

This module must not import `app`: it computes check characters itself (ISO 7064 MOD 11-2).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from bisect import bisect_right
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from itertools import accumulate
from typing import Final, TextIO

from signing.colours import COLOURS

# --- GB 11643-1999 check character (ISO 7064 MOD 11-2) -------------------------------------------------

_WEIGHTS: Final = tuple(pow(2, 17 - i, 11) for i in range(17))  # 7, 9, 10, 5, 8, 4, 2, 1, 6, 3, ...
_CHECK: Final = "10X98765432"


def check_char(first17: str) -> str:
    """The 18th character of a resident identity number, from its first 17 digits."""
    if len(first17) != 17 or not first17.isdigit():
        raise ValueError("the check character is computed over exactly 17 digits")
    return _CHECK[_weighted(first17, 0) % 11]


def _weighted(digits: str, start: int) -> int:
    """Sum of digits times their weights, for digits that begin at position `start` of the number."""
    return sum(int(c) * w for c, w in zip(digits, _WEIGHTS[start : start + len(digits)], strict=True))


# --- Where people live, and how old they are ----------------------------------------------------------

# County-level divisions of Chongqing (GB/T 2260 code, population in ten thousands, 2020 census, rounded),
# then residents registered elsewhere (Sichuan, Hubei, Guizhou, Guangdong, Beijing, Shanghai).
REGIONS: Final[tuple[tuple[str, float], ...]] = (
    ("500101", 156.4), ("500102", 111.5), ("500103", 58.9), ("500104", 42.1), ("500105", 92.6),
    ("500106", 147.9), ("500107", 152.6), ("500108", 119.8), ("500109", 83.4), ("500110", 101.1),
    ("500111", 83.5), ("500112", 219.2), ("500113", 117.9), ("500114", 48.7), ("500115", 69.3),
    ("500116", 135.9), ("500117", 124.5), ("500118", 114.9), ("500119", 57.2), ("500120", 76.1),
    ("500151", 68.6), ("500152", 68.7), ("500153", 66.9), ("500154", 120.3), ("500155", 64.5),
    ("500156", 35.7), ("500229", 19.7), ("500230", 55.7), ("500231", 65.1), ("500233", 72.1),
    ("500235", 92.9), ("500236", 74.5), ("500237", 46.3), ("500238", 38.9), ("500240", 38.9),
    ("500241", 48.6), ("500242", 55.6), ("500243", 49.4),
    ("510104", 40.0), ("510107", 40.0), ("511602", 30.0), ("420102", 20.0), ("520102", 20.0),
    ("440305", 10.0), ("110105", 10.0), ("310115", 10.0),
)  # fmt: skip

# Age bands (years, from-to exclusive) and their share of the population, in per cent (2020 census).
AGE_BANDS: Final[tuple[tuple[int, int, float], ...]] = (
    (0, 5, 5.5), (5, 10, 6.4), (10, 15, 6.0), (15, 20, 5.3), (20, 25, 5.3), (25, 30, 6.7),
    (30, 35, 8.8), (35, 40, 7.0), (40, 45, 6.6), (45, 50, 8.3), (50, 55, 8.6), (55, 60, 7.0),
    (60, 65, 5.2), (65, 70, 5.4), (70, 75, 3.8), (75, 80, 2.3), (80, 85, 1.5), (85, 90, 0.8),
    (90, 100, 0.3),
)  # fmt: skip

# Ages are counted at this date, so a number never depends on when it is generated.
AGE_REFERENCE: Final = date(2022, 1, 1)
SEQUENCES: Final = 1000  # the three-digit sequence code; its last digit's parity is the sex

SURNAMES: Final = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
GIVEN: Final = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超兰霞平刚桂华飞玉建国红梅志丹玲婷浩宇欣怡子涵梓萱"

# --- Situations, their colour, and the records that put a person in them ---------------------------------

# situation -> (colour, share within that colour, pop-up expected, vaccination course complete)
SITUATIONS: Final[dict[str, tuple[str, float, bool, bool]]] = {
    "vaccinated_negative": ("green", 0.80, False, True),
    "unvaccinated": ("green", 0.10, False, False),
    "partly_vaccinated": ("green", 0.05, False, False),
    "arrival_cleared": ("green", 0.05, False, True),
    "secondary_contact": ("yellow", 0.45, False, True),
    "arrival_pending": ("yellow", 0.55, True, True),
    "close_contact": ("red", 0.40, False, True),
    "quarantine": ("red", 0.20, False, True),
    "positive_test": ("red", 0.20, False, True),
    "confirmed": ("red", 0.20, False, True),
}
DEFAULT_SHARES: Final[Mapping[str, float]] = {"green": 0.90, "yellow": 0.06, "red": 0.04}

HIGH_RISK_AREA: Final = "310115"
RISK_AREAS: Final = (("310115", "high"), ("110105", "medium"), ("440305", "low"))
LOW_RISK_AREA: Final = "440305"
VACCINE: Final = "sinovac-coronavac"
PARTIAL_VACCINE: Final = "sinopharm-bbibp"
LAB: Final = "loadtest-lab"
AUTHORITY: Final = "loadtest-cdc"
HOUR: Final = 3600
DAY: Final = 24 * HOUR

_MASK64: Final = (1 << 64) - 1


def _mix(value: int) -> int:
    """SplitMix64's finaliser: a fast, well-spread 64-bit hash of an integer."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


@dataclass(frozen=True, slots=True)
class Person:
    index: int
    number: str  # synthetic resident identity number; never leaves the load-test machines but as a query
    name: str
    situation: str
    region: str
    born: date

    @property
    def colour(self) -> str:
        return SITUATIONS[self.situation][0]

    @property
    def popup(self) -> bool:
        return SITUATIONS[self.situation][2]

    @property
    def vaccine_complete(self) -> bool:
        return SITUATIONS[self.situation][3]


@dataclass(frozen=True, slots=True)
class _Cell:
    region: str
    first_day: int  # proleptic ordinal of the first birth date of the band
    days: int
    region_weighted: int  # the region code's part of the check sum, computed once


def _build_cells() -> tuple[tuple[_Cell, ...], tuple[int, ...]]:
    cells: list[_Cell] = []
    weights: list[float] = []
    for region, people in REGIONS:
        for young, old, share in AGE_BANDS:
            first = date(AGE_REFERENCE.year - old, 1, 1)
            last = date(AGE_REFERENCE.year - young, 1, 1)  # exclusive
            cells.append(_Cell(region, first.toordinal(), (last - first).days, _weighted(region, 0)))
            weights.append(people * share)
    # The largest scale at which no cell needs more numbers than it has (days x sequence codes).
    scale = min(c.days * SEQUENCES / w for c, w in zip(cells, weights, strict=True))
    sizes = [math.floor(w * scale) for w in weights]
    return tuple(cells), tuple(accumulate(sizes))


_CELLS, _ENDS = _build_cells()
SPACE: Final = _ENDS[-1]


def _coprime_stride(space: int) -> int:
    stride = round(space * (math.sqrt(5) - 1) / 2)  # near space / golden ratio: a low-discrepancy walk
    while math.gcd(stride, space) != 1:
        stride += 1
    return stride


STRIDE: Final = _coprime_stride(SPACE)
_STRIDE_INVERSE: Final = pow(STRIDE, -1, SPACE)
_SEQUENCE_SHIFT: Final = 389  # per-day rotation of sequence codes, so both sexes appear in every cell


class Population:
    """People 0..count-1 for a seed and colour shares; `person(i)` costs microseconds and no memory."""

    def __init__(self, seed: int = 2022, shares: Mapping[str, float] | None = None) -> None:
        shares = dict(DEFAULT_SHARES if shares is None else shares)
        unknown = set(shares) - set(COLOURS)
        if unknown:
            raise ValueError(f"unknown colours {sorted(unknown)}; use {', '.join(COLOURS)}")
        if any(v < 0 for v in shares.values()) or sum(shares.values()) <= 0:
            raise ValueError("colour shares must be non-negative and not all zero")
        total = sum(shares.values())
        self.seed = seed
        self.shares = {c: shares.get(c, 0.0) / total for c in COLOURS}
        self._offset = _mix(seed) % SPACE
        self._seed_mix = _mix(seed ^ 0x5EED)
        names, cumulative, running = [], [], 0.0
        for situation, (colour, within, _, _) in SITUATIONS.items():
            running += self.shares[colour] * within
            names.append(situation)
            cumulative.append(running)
        self._situations: Sequence[str] = names
        self._cumulative = [c / running for c in cumulative]

    # -- index <-> position <-> number --------------------------------------------------------------------

    def _position(self, index: int) -> int:
        if not 0 <= index < SPACE:
            raise IndexError(f"index must be in 0..{SPACE - 1}")
        return (index * STRIDE + self._offset) % SPACE

    def number(self, index: int) -> str:
        return self._number(index)[0]

    def _number(self, index: int) -> tuple[str, date]:
        position = self._position(index)
        cell_no = bisect_right(_ENDS, position)
        cell = _CELLS[cell_no]
        within = position - (_ENDS[cell_no - 1] if cell_no else 0)
        day, rest = within % cell.days, within // cell.days
        born = date.fromordinal(cell.first_day + day)
        tail = f"{born.year:04d}{born.month:02d}{born.day:02d}{(rest + day * _SEQUENCE_SHIFT) % SEQUENCES:03d}"
        return f"{cell.region}{tail}{_CHECK[(cell.region_weighted + _weighted(tail, 6)) % 11]}", born

    def index_of(self, number: str) -> int | None:
        """The index of a number this population generates, or None: the inverse of `number`."""
        if len(number) != 18 or not number[:17].isdigit() or check_char(number[:17]) != number[17]:
            return None
        try:
            ordinal = date(int(number[6:10]), int(number[10:12]), int(number[12:14])).toordinal()
        except ValueError:
            return None
        region, sequence = number[:6], int(number[14:17])
        for cell_no, cell in enumerate(_CELLS):
            if cell.region != region or not 0 <= ordinal - cell.first_day < cell.days:
                continue
            day = ordinal - cell.first_day
            rest = (sequence - day * _SEQUENCE_SHIFT) % SEQUENCES
            start = _ENDS[cell_no - 1] if cell_no else 0
            within = rest * cell.days + day
            if within >= _ENDS[cell_no] - start:
                return None  # a valid number outside this cell's share of the space
            return ((start + within - self._offset) * _STRIDE_INVERSE) % SPACE
        return None

    # -- the rest of a person -------------------------------------------------------------------------------

    def _bits(self, index: int) -> int:
        return _mix(index ^ self._seed_mix)

    def situation(self, index: int) -> str:
        u = (self._bits(index) >> 11) / (1 << 53)
        return self._situations[min(bisect_right(self._cumulative, u), len(self._situations) - 1)]

    def person(self, index: int) -> Person:
        number, born = self._number(index)
        bits = self._bits(index)
        given = GIVEN[(bits >> 8) % len(GIVEN)]
        if bits & 1:
            given += GIVEN[(bits >> 20) % len(GIVEN)]
        return Person(
            index, number, SURNAMES[(bits >> 32) % len(SURNAMES)] + given, self.situation(index), number[:6], born
        )

    def people(self, count: int, start: int = 0) -> Iterator[Person]:
        if count < 0 or start < 0 or start + count > SPACE:
            raise ValueError(f"people must lie in 0..{SPACE - 1}")
        for index in range(start, start + count):
            yield self.person(index)


# --- Records per kind, as CSV -------------------------------------------------------------------------------

KINDS: Final[dict[str, tuple[str, ...]]] = {
    "population": ("id_type", "id_number", "name"),
    "risk_area": ("area_code", "level", "valid_from", "valid_until"),
    "vaccination": ("id_type", "id_number", "product", "dose", "vaccinated_on", "site"),
    "test": ("id_type", "id_number", "sampled_at", "result", "lab", "reported_at"),
    "travel": ("id_type", "id_number", "area_code", "arrived_at", "mode"),
    "designation": ("id_type", "id_number", "kind", "valid_from", "valid_until", "authority", "reason"),
}
# Upload order: people before their records, risk areas before arrivals are judged.
LOAD_ORDER: Final = tuple(KINDS)

_DESIGNATIONS: Final = {
    "secondary_contact": (2 * DAY, 5 * DAY),
    "close_contact": (DAY, 6 * DAY),
    "quarantine": (3 * DAY, 4 * DAY),
    "confirmed": (5 * DAY, None),
}


def iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def records(person: Person, kind: str, now: int) -> list[tuple[str, ...]]:
    """CSV rows of one kind that put `person` in their situation at `now` (and for days after)."""
    s, ident = person.situation, ("resident", person.number)
    if kind == "population":
        return [(*ident, person.name)]
    if kind == "vaccination":
        if s == "unvaccinated":
            return []
        if s == "partly_vaccinated":
            return [(*ident, PARTIAL_VACCINE, "1", _day(now - 30 * DAY), "loadtest-site")]
        return [(*ident, VACCINE, "1", _day(now - 200 * DAY), "loadtest-site"),
                (*ident, VACCINE, "2", _day(now - 170 * DAY), "loadtest-site")]  # fmt: skip
    if kind == "test":
        tests: list[int] = []
        if s in ("vaccinated_negative", "unvaccinated", "partly_vaccinated"):
            tests.append(now - (1 + person.index % 5) * DAY)
        if s == "arrival_cleared":
            arrived = now - 3 * DAY
            tests += [arrived - DAY, arrived + 10 * HOUR]
        rows: list[tuple[str, ...]] = [(*ident, iso(t), "negative", LAB, iso(t + 6 * HOUR)) for t in tests]
        if s == "positive_test":
            rows.append((*ident, iso(now - 3 * DAY), "positive", LAB, iso(now - 3 * DAY + 6 * HOUR)))
        return rows
    if kind == "travel":
        if s in ("arrival_cleared", "arrival_pending"):
            arrived = now - (3 * DAY if s == "arrival_cleared" else DAY)
            return [(*ident, HIGH_RISK_AREA, iso(arrived), "rail")]
        return []
    if kind == "designation":
        if s not in _DESIGNATIONS:
            return []
        since, remaining = _DESIGNATIONS[s]
        until = "" if remaining is None else iso(now + remaining)
        return [(*ident, s, iso(now - since), until, AUTHORITY, "loadtest")]
    if kind == "risk_area":
        return []
    raise ValueError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")


def _day(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).date().isoformat()


def risk_area_rows(now: int) -> list[tuple[str, ...]]:
    return [(code, level, iso(now - 10 * DAY), iso(now + 20 * DAY)) for code, level in RISK_AREAS]


def anchor(now: int) -> int:
    """Record times are anchored at midnight UTC, so exporting twice in a day gives identical rows."""
    return now - now % DAY


def write_csv(out: TextIO, population: Population, kind: str, count: int, *, start: int = 0, now: int) -> int:
    """Write the CSV of one kind for people start..start+count-1; returns the number of data rows."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(KINDS[kind])
    if kind == "risk_area":
        areas = risk_area_rows(now)
        writer.writerows(areas)
        return len(areas)
    written = 0
    for person in population.people(count, start):
        rows = records(person, kind, now)
        writer.writerows(rows)
        written += len(rows)
    return written


def parse_shares(text: str) -> dict[str, float]:
    """`green=0.9,yellow=0.06,red=0.04` -> shares (normalised later)."""
    shares: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        colour, _, value = part.partition("=")
        try:
            shares[colour.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad share {part!r}: write colour=fraction") from None
    return shares


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.population",
        description="Write the synthetic population's records of one kind as an agency upload CSV.",
    )
    parser.add_argument("--kind", required=True, choices=(*KINDS, "numbers"),
                        help="record kind to export; `numbers` prints index and number only")  # fmt: skip
    parser.add_argument("--count", type=int, required=True, help="how many people (indexes start..start+count-1)")
    parser.add_argument("--start", type=int, default=0, help="first index (to split an export across machines)")
    parser.add_argument("--seed", type=int, default=2022)
    parser.add_argument("--colours", type=parse_shares, default=dict(DEFAULT_SHARES),
                        help="share of each colour, e.g. green=0.9,yellow=0.06,red=0.04")  # fmt: skip
    parser.add_argument("--now", type=int, default=None,
                        help="epoch seconds the records are relative to (default: today's midnight UTC)")  # fmt: skip
    args = parser.parse_args(argv)
    population = Population(args.seed, args.colours)
    now = args.now if args.now is not None else anchor(int(datetime.now(UTC).timestamp()))
    out = sys.stdout
    if args.kind == "numbers":
        for person in population.people(args.count, args.start):
            out.write(f"{person.index},{person.number},{person.situation}\n")
        return 0
    rows = write_csv(out, population, args.kind, args.count, start=args.start, now=now)
    print(f"{args.kind}: {rows} rows for {args.count} people", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        sys.stderr.close()
        sys.exit(0)
