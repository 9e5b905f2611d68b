"""Plain record types the rules engine reads.

Every moment is an int of epoch seconds (UTC): the engine compares and adds ints only, so an
evaluation does no datetime arithmetic. Intervals are half-open, ``[valid_from, valid_until)``:
a designation whose ``valid_until`` equals ``now`` has ended. ``None`` as an end means open-ended.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from signing.colours import COLOURS, Colour

TestResult = Literal["negative", "positive"]
DesignationKind = Literal["confirmed", "close_contact", "secondary_contact", "quarantine", "cleared"]
RiskLevel = Literal["high", "medium", "low"]

# Higher is more severe; the evaluated colour is the most severe of every active reason.
SEVERITY: Final[dict[str, int]] = {colour: rank for rank, colour in enumerate(COLOURS)}
TEST_RESULTS: Final = ("negative", "positive")
DESIGNATION_KINDS: Final = ("confirmed", "close_contact", "secondary_contact", "quarantine", "cleared")
RISK_LEVELS: Final = ("high", "medium", "low")


@dataclass(frozen=True, slots=True)
class Vaccination:
    product: str  # product code as in the rule set's [vaccines] table, e.g. "sinovac-coronavac"
    dose: int  # 1 for the first dose; a booster continues the count
    vaccinated_on: int  # epoch seconds


@dataclass(frozen=True, slots=True)
class NucleicTest:
    sampled_at: int
    result: TestResult
    reported_at: int | None = None


@dataclass(frozen=True, slots=True)
class Arrival:
    area_code: str  # GB/T 2260 six-digit code of the area arrived from
    arrived_at: int
    mode: str  # rail, air, road, ... (informational)


@dataclass(frozen=True, slots=True)
class Designation:
    kind: DesignationKind
    valid_from: int
    valid_until: int | None = None


@dataclass(frozen=True, slots=True)
class RiskArea:
    area_code: str
    level: RiskLevel
    valid_from: int
    valid_until: int | None = None


@dataclass(frozen=True, slots=True)
class Override:
    """An authority's manual status: wins over every rule until ``expires_at``."""

    colour: Colour
    reason: str  # the authority's own reason text, kept for the audit log; the reason code is "override"
    expires_at: int


@dataclass(frozen=True, slots=True)
class SubjectRecords:
    vaccinations: tuple[Vaccination, ...] = ()
    tests: tuple[NucleicTest, ...] = ()
    arrivals: tuple[Arrival, ...] = ()
    designations: tuple[Designation, ...] = ()
    override: Override | None = None
