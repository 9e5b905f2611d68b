"""The optional checkpoint policy of a /v1/verify body, read into signing.policy.Policy or refused (422)."""

from __future__ import annotations

from typing import Any

from app.http.problems import InvalidField
from signing.policy import MAX_TEST_AGE_HOURS, Policy

_MEMBERS = frozenset({"max_test_age_hours", "require_vaccination", "accept_peer_codes"})


def policy_from_body(body: dict[str, Any]) -> Policy | None:
    """None when the body names no policy. An unknown member is refused rather than ignored: a gate
    that misspells its rule must not open for everyone."""
    if "policy" not in body:
        return None
    raw = body["policy"]
    if not isinstance(raw, dict):  # null too: a policy sent empty-handed is a client's mistake
        raise InvalidField("policy", "wrong_type", "policy must be an object")
    unknown = sorted(raw.keys() - _MEMBERS)
    if unknown:
        raise InvalidField(
            f"policy.{unknown[0]}",
            "unknown_member",
            "policy takes only max_test_age_hours, require_vaccination and accept_peer_codes",
        )
    hours = raw.get("max_test_age_hours")
    if "max_test_age_hours" in raw and (type(hours) is not int or not 1 <= hours <= MAX_TEST_AGE_HOURS):
        raise InvalidField(
            "policy.max_test_age_hours",
            "out_of_range" if type(hours) is int else "wrong_type",
            f"max_test_age_hours must be a whole number of hours from 1 to {MAX_TEST_AGE_HOURS}",
        )
    vaccination = raw.get("require_vaccination", False)
    if type(vaccination) is not bool:
        raise InvalidField("policy.require_vaccination", "wrong_type", "require_vaccination must be true or false")
    peers = raw.get("accept_peer_codes", True)
    if type(peers) is not bool:
        raise InvalidField("policy.accept_peer_codes", "wrong_type", "accept_peer_codes must be true or false")
    return Policy(max_test_age_hours=hours, require_vaccination=vaccination, accept_peer_codes=peers)
