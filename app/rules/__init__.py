"""Status rules: record types, versioned rule sets, the risk-area index and the evaluator.

Pure Python with no I/O beyond reading a rule set file at start-up; callers fetch records and pass
them in. Moments are ints of epoch seconds (UTC) throughout.
"""

from signing.colours import COLOURS

from .areas import RiskAreaIndex, area_prefix
from .engine import EVALUATION_ERRORS, REASON_CODES, ErrorCounter, Evaluation, evaluate
from .records import (
    DESIGNATION_KINDS,
    RISK_LEVELS,
    TEST_RESULTS,
    Arrival,
    Designation,
    NucleicTest,
    Override,
    RiskArea,
    SubjectRecords,
    Vaccination,
)
from .ruleset import DEFAULT_RULESET, RuleSet, RuleSetError, load_ruleset, parse_ruleset

__all__ = [
    "COLOURS",
    "DEFAULT_RULESET",
    "DESIGNATION_KINDS",
    "EVALUATION_ERRORS",
    "REASON_CODES",
    "RISK_LEVELS",
    "TEST_RESULTS",
    "Arrival",
    "Designation",
    "ErrorCounter",
    "Evaluation",
    "NucleicTest",
    "Override",
    "RiskArea",
    "RiskAreaIndex",
    "RuleSet",
    "RuleSetError",
    "SubjectRecords",
    "Vaccination",
    "area_prefix",
    "evaluate",
    "load_ruleset",
    "parse_ruleset",
]
