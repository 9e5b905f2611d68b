"""Per-client request limits: which bucket each route draws from, and at what rate.

Every authorised route takes a token from one of its client's buckets (cache.rate_limit, shared by every
process through Redis). A bucket's rate is the client's own override (`api_clients.rate_limits`, set by
`healthcode clients limit`) or else its kind's default: DEFAULTS, changed per deployment with
HEALTHCODE_RATE_LIMITS.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Final

from cache.rate_limit import Rate

STATUS: Final = "status"
VERIFY: Final = "verify"
TEST_CODE: Final = "test-code"
QR: Final = "qr"
DECLARATIONS: Final = "declarations"  # for health declarations, when they exist
APPEALS: Final = "appeals"
RELATIONS: Final = "relations"  # family members: registering, ending and listing relations, the look-up log
SAMPLES: Final = "samples"
UPLOADS: Final = "uploads"
BATCH_READS: Final = "batch-reads"

# Each kind's buckets and their default rates. A status look-up is cheap but each one can reveal a
# person's status, so a citizen backend's default bounds what a leaked key can enumerate: an operator
# raises it for a backend that really serves that many people.
DEFAULTS: Final[Mapping[str, Mapping[str, Rate]]] = {
    "citizen-backend": {
        STATUS: Rate(500, 1000),
        TEST_CODE: Rate(50, 100),
        QR: Rate(100, 200),
        DECLARATIONS: Rate(100, 200),
        APPEALS: Rate(20, 40),
        RELATIONS: Rate(20, 40),
    },
    "scanner": {VERIFY: Rate(20, 40)},
    "agency": {UPLOADS: Rate(20, 20), SAMPLES: Rate(200, 400), BATCH_READS: Rate(50, 100)},
    "operator": {APPEALS: Rate(20, 40)},
}
BUCKETS: Final = tuple(sorted({bucket for buckets in DEFAULTS.values() for bucket in buckets}))


class LimitSpecError(ValueError):
    """A limit is written wrongly; the message says which part."""


def parse_rate(text: str) -> Rate:
    """`RATE[/BURST]`: `500` (burst one second's worth), `500/1000`, `0.5/2`; `0` refuses every request."""
    rate_text, _, burst_text = text.strip().partition("/")
    try:
        per_second = float(rate_text)
        burst = int(burst_text) if burst_text else max(1, math.ceil(per_second))
    except ValueError:
        raise LimitSpecError(f"{text!r} is not RATE[/BURST], e.g. 500/1000") from None
    if per_second == 0:
        return Rate(0, 0)
    try:
        return Rate(per_second, burst)
    except ValueError as exc:
        raise LimitSpecError(f"{text!r}: {exc}") from None


def parse_bucket_rates(specs: Iterable[str], kind: str | None = None) -> dict[str, Rate]:
    """`BUCKET=RATE[/BURST]` items (a client's overrides); with `kind`, only that kind's buckets."""
    rates = {}
    for spec in specs:
        bucket, sep, rate = spec.partition("=")
        bucket = bucket.strip()
        allowed = DEFAULTS[kind] if kind is not None else BUCKETS
        if not sep or bucket not in allowed:
            raise LimitSpecError(f"{spec!r}: expected BUCKET=RATE[/BURST] with BUCKET one of {', '.join(allowed)}")
        rates[bucket] = parse_rate(rate)
    return rates


def parse_kind_rates(text: str) -> dict[tuple[str, str], Rate]:
    """HEALTHCODE_RATE_LIMITS: `KIND.BUCKET=RATE[/BURST]`, separated by commas or spaces."""
    rates = {}
    for spec in text.replace(",", " ").split():
        name, sep, rate = spec.partition("=")
        kind, _, bucket = name.partition(".")
        if not sep or bucket not in DEFAULTS.get(kind, {}):
            known = ", ".join(f"{k}.{b}" for k, buckets in DEFAULTS.items() for b in buckets)
            raise LimitSpecError(f"{spec!r}: expected KIND.BUCKET=RATE[/BURST] with KIND.BUCKET one of {known}")
        rates[(kind, bucket)] = parse_rate(rate)
    return rates


def rates_to_json(rates: Mapping[str, Rate]) -> dict[str, dict[str, float]]:
    return {bucket: {"per_second": r.per_second, "burst": r.burst} for bucket, r in sorted(rates.items())}


def rates_from_json(stored: Mapping[str, Any]) -> tuple[tuple[str, Rate], ...]:
    return tuple((bucket, Rate(float(r["per_second"]), int(r["burst"]))) for bucket, r in sorted(stored.items()))


class Limits:
    """The rate of each (client, bucket): the client's override, else its kind's configured default."""

    def __init__(self, overrides: Mapping[tuple[str, str], Rate] | None = None) -> None:
        self._defaults = {kind: dict(buckets) for kind, buckets in DEFAULTS.items()}
        for (kind, bucket), rate in (overrides or {}).items():
            self._defaults[kind][bucket] = rate

    def default(self, kind: str, bucket: str) -> Rate:
        return self._defaults[kind][bucket]

    def rate(self, kind: str, bucket: str, client_rates: tuple[tuple[str, Rate], ...] = ()) -> Rate:
        for name, rate in client_rates:  # usually empty: a few clients have overrides
            if name == bucket:
                return rate
        return self._defaults[kind][bucket]


def unbounded(per_second: float = 1_000_000) -> tuple[tuple[str, str, Rate], ...]:
    """Limits too high to matter, for every bucket but agency uploads: for load tests and test suites
    that measure something else (as Settings.rate_limits, or HEALTHCODE_RATE_LIMITS via `as_spec`)."""
    rate = Rate(per_second, int(per_second))
    return tuple((kind, bucket, rate) for kind, buckets in DEFAULTS.items() for bucket in buckets if bucket != UPLOADS)


def as_spec(rates: Iterable[tuple[str, str, Rate]]) -> str:
    """The HEALTHCODE_RATE_LIMITS text of these limits."""
    return ",".join(f"{kind}.{bucket}={rate.per_second:g}/{rate.burst}" for kind, bucket, rate in rates)
