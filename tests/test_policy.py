"""A checkpoint's policy from a token alone (signing/policy.py): the rules, their edges, and a real token."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import signing.policy
from signing import ES256, STATUS_TYP, KeyRecord, KeyRing, TokenVerifier, generate_private_key
from signing.policy import TEST_AGE, VACCINATION, Policy, failed_rules, token_failed_rules

NOW = 1_700_000_000
HOUR = 3600


@pytest.mark.parametrize(
    ("policy", "negative_test_at", "vaccinated", "failed"),
    [
        (Policy(), None, False, ()),
        (Policy(max_test_age_hours=48), NOW - 48 * HOUR, False, ()),
        (Policy(max_test_age_hours=48), NOW - 48 * HOUR - 1, True, (TEST_AGE,)),
        (Policy(max_test_age_hours=48), None, True, (TEST_AGE,)),
        (Policy(max_test_age_hours=24), NOW + 60, True, ()),  # sampled on a clock a minute ahead
        (Policy(require_vaccination=True), None, True, ()),
        (Policy(require_vaccination=True), NOW, False, (VACCINATION,)),
        (Policy(max_test_age_hours=72, require_vaccination=True), NOW - 73 * HOUR, False, (TEST_AGE, VACCINATION)),
        (Policy(max_test_age_hours=72, require_vaccination=True), NOW - 71 * HOUR, True, ()),
    ],
)
def test_rules(policy: Policy, negative_test_at: int | None, vaccinated: bool, failed: tuple[str, ...]) -> None:
    assert failed_rules(policy, negative_test_at=negative_test_at, vaccinated=vaccinated, now=NOW) == failed


@pytest.mark.parametrize("hours", [0, -1, 721, True, 1.5, "48"])
def test_a_policy_outside_its_range_is_refused(hours: object) -> None:
    with pytest.raises(ValueError, match="max_test_age_hours"):
        Policy(max_test_age_hours=hours)  # type: ignore[arg-type]


def test_require_vaccination_is_a_boolean() -> None:
    with pytest.raises(ValueError, match="require_vaccination"):
        Policy(require_vaccination=1)  # type: ignore[arg-type]


def test_from_a_verified_token_alone() -> None:
    """What an offline scanner does: verify with the published key, then apply the policy to the claims."""
    ring = KeyRing([KeyRecord.from_private_key(generate_private_key(ES256))], 300, issuer="healthcode")
    verifier = TokenVerifier(ring, "healthcode", STATUS_TYP)
    tested = ring.signer.sign_status("handle", "G", 0, 1, NOW, ver=3, negative_test_at=NOW - 30 * HOUR)
    untested = ring.signer.sign_status("handle", "G", 0, 0, NOW, ver=3)
    gate = Policy(max_test_age_hours=24, require_vaccination=True)
    assert token_failed_rules(Policy(max_test_age_hours=48), verifier.verify(tested, NOW), NOW) == ()
    assert token_failed_rules(gate, verifier.verify(tested, NOW), NOW) == (TEST_AGE,)
    assert token_failed_rules(gate, verifier.verify(untested, NOW), NOW) == (TEST_AGE, VACCINATION)
    assert token_failed_rules(Policy(), verifier.verify(untested, NOW), NOW) == ()


def test_a_vendor_can_copy_the_module_alone() -> None:
    """Nothing but the standard library: the file works outside this repository."""
    tree = ast.parse(Path(signing.policy.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported
    assert {name.split(".")[0] for name in imported} <= set(sys.stdlib_module_names) | {"__future__"}
