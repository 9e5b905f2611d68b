"""A checkpoint's policy applied to a status token alone: the check an offline scanner makes.

Gates in 2022 asked for a negative test within 24, 48 or 72 hours, some also for a complete
vaccination course. A status token carries both facts: ``nt``, when the last test was sampled if it was
negative (Unix seconds, absent when there is none), and ``vac`` (1 when the course is complete).
This module is plain Python with no imports of its own beyond the standard library, so a scanner vendor
can copy it as it is. Verify the token's signature and expiry first; this only reads its claims.
Online, `/v1/verify` applies the same rules to the person's current status.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

# Names of the rules, in the order they are checked; `/v1/verify` answers them in `failed_rules`.
TEST_AGE: Final = "test_age"  # no negative test, or the last one is older than max_test_age_hours
VACCINATION: Final = "vaccination"  # the vaccination course is not complete
PEER_CODE: Final = "peer_code"  # the token was signed by a peer deployment and the checkpoint takes only its own
MAX_TEST_AGE_HOURS: Final = 24 * 30  # a month: a larger limit is a mistake, not a policy


@dataclass(frozen=True, slots=True)
class Policy:
    """What a checkpoint asks for; the default asks for nothing."""

    max_test_age_hours: int | None = None
    require_vaccination: bool = False
    # Mutual recognition (互认): a code another deployment on the trust list signed is accepted unless
    # the checkpoint says otherwise.
    accept_peer_codes: bool = True

    def __post_init__(self) -> None:
        hours = self.max_test_age_hours
        if hours is not None and (type(hours) is not int or not 1 <= hours <= MAX_TEST_AGE_HOURS):
            raise ValueError(f"max_test_age_hours must be an integer from 1 to {MAX_TEST_AGE_HOURS}, not {hours!r}")
        if type(self.require_vaccination) is not bool:
            raise ValueError(f"require_vaccination must be true or false, not {self.require_vaccination!r}")
        if type(self.accept_peer_codes) is not bool:
            raise ValueError(f"accept_peer_codes must be true or false, not {self.accept_peer_codes!r}")


def failed_rules(
    policy: Policy, *, negative_test_at: int | None, vaccinated: bool, now: int, peer: bool = False
) -> tuple[str, ...]:
    """The rules of ``policy`` a person fails, in order; empty when the policy is met.

    A test counts while ``now - negative_test_at`` is at most ``max_test_age_hours`` whole hours (a test
    sampled 48 h 0 s ago meets a 48-hour limit; one second more does not).
    """
    failed: list[str] = []
    if policy.max_test_age_hours is not None and (
        negative_test_at is None or now - negative_test_at > policy.max_test_age_hours * 3600
    ):
        failed.append(TEST_AGE)
    if policy.require_vaccination and not vaccinated:
        failed.append(VACCINATION)
    if peer and not policy.accept_peer_codes:
        failed.append(PEER_CODE)
    return tuple(failed)


def token_failed_rules(
    policy: Policy, claims: Mapping[str, object], now: int, *, peer: bool = False
) -> tuple[str, ...]:
    """``failed_rules`` read off a verified status token's claims (``nt`` and ``vac``); ``peer`` when
    another deployment signed it (its ``iss`` is on the trust list, not this scanner's own issuer)."""
    nt = claims.get("nt")
    negative_test_at = nt if type(nt) is int else None
    return failed_rules(
        policy, negative_test_at=negative_test_at, vaccinated=claims.get("vac") == 1, now=now, peer=peer
    )
