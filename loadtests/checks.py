"""What the load test checks in each answer, kept apart from Locust so the checks are tested on their own.

A check returns None when the answer is right, or a short message saying what is wrong (it becomes the
failure's name in Locust's statistics, so it must not carry per-request details such as numbers).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from signing import BadToken, KeyRecord, TokenVerifier
from signing.colours import COLOUR_LETTER
from signing.encoding import b64url_decode, b64url_encode
from signing.jws import STATUS_TYP
from signing.keys import jwk_thumbprint
from signing.records import ACTIVE

# Within this many seconds of `exp` either verdict is right: the scanner's clock and ours differ a little.
EXPIRY_SLACK: Final = 1
TAMPERED_REASONS: Final = frozenset({"bad_signature", "malformed"})
# What a checkpoint that asks for a recent test sends with its scans (the 72 hours of many gates in 2022).
CHECKPOINT_POLICY: Final = {"max_test_age_hours": 72}
HANDLE_BYTES: Final = 44  # nonce, sealed pseudonym and tag: the size of a real `sub`


def verifier_from_jwks(document: Mapping[str, Any], issuer: str) -> TokenVerifier:
    """A verifier that trusts exactly the keys a JWKS document publishes (as an offline scanner does)."""
    by_kid: dict[str, list[KeyRecord]] = {}
    for jwk in document.get("keys", []):
        public = {k: str(v) for k, v in jwk.items()}
        record = KeyRecord(
            kid=public["kid"], thumbprint=jwk_thumbprint(public), alg=public["alg"], public_jwk=public, state=ACTIVE
        )
        by_kid.setdefault(record.kid, []).append(record)
    if not by_kid:
        raise ValueError("the JWKS document publishes no keys")

    def lookup(kid: str) -> Sequence[KeyRecord]:
        return by_kid.get(kid, ())

    return TokenVerifier(lookup, issuer, STATUS_TYP)


@dataclass(frozen=True, slots=True)
class Issued:
    """A token a citizen was given in this run, with what it claims."""

    token: str
    exp: int
    colour: str


@dataclass(frozen=True, slots=True)
class Expected:
    """What the status of a person should show, when the test knows (population loaded by this run)."""

    colour: str
    popup: bool
    vaccine_complete: bool


def check_status(
    body: object, verifier: TokenVerifier | None, now: int, expected: Expected | None = None
) -> tuple[str | None, Issued | None]:
    """Check a 200 answer of POST /v1/status: a token that verifies and agrees with the answer."""
    if not isinstance(body, dict):
        return "status answer is not a JSON object", None
    token, colour = body.get("token"), body.get("colour")
    if not isinstance(token, str) or not token:
        return "status answer without a token", None
    if colour not in COLOUR_LETTER:
        return "status answer without a colour", None
    if verifier is None:
        return "no published keys to verify the token with", None
    try:
        claims = verifier.verify(token, now)
    except BadToken as exc:
        return f"token does not verify with the published keys ({exc.reason})", None
    vaccination = body.get("vaccination")
    complete = vaccination.get("complete") if isinstance(vaccination, dict) else None
    if claims.get("st") != COLOUR_LETTER[colour]:
        return "token colour differs from the answer's colour", None
    if "subject" in body:
        return "status answer carries the pseudonym", None
    if claims.get("pop") != int(bool(body.get("popup"))) or claims.get("vac") != int(bool(complete)):
        return "token pop-up or vaccination flag differs from the answer", None
    last_test = body.get("last_test")
    negative = isinstance(last_test, dict) and last_test.get("result") == "negative"
    if claims.get("nt") != (last_test["sampled_at"] if negative and isinstance(last_test, dict) else None):
        return "token's last negative test differs from the answer's last test", None
    if claims.get("ver") != body.get("version"):
        return "token status version differs from the answer's version", None
    exp = claims.get("exp")
    if not isinstance(exp, int) or body.get("token_expires_at") != exp:
        return "token_expires_at differs from the token's exp", None
    if expected is not None:
        if colour != expected.colour:
            return f"colour {colour}, expected {expected.colour}", None
        if bool(body.get("popup")) != expected.popup:
            return "pop-up flag is not what the person's records imply", None
        if bool(complete) != expected.vaccine_complete:
            return "vaccination mark is not what the person's records imply", None
    return None, Issued(token, exp, colour)


def expected_validity(issued: Issued, now: int) -> bool | None:
    """True if the token must verify now, False if it must be refused as expired, None if too close to say."""
    if issued.exp > now + EXPIRY_SLACK:
        return True
    if issued.exp <= now - EXPIRY_SLACK:
        return False
    return None


def tamper(token: str, rng: random.Random) -> str:
    """A token changed the ways a forger would: a better colour, another person, or a damaged signature."""
    header, payload, signature = token.split(".")
    variant = rng.randrange(3)
    if variant == 0:
        claims = json.loads(b64url_decode(payload))
        green, red = COLOUR_LETTER["green"], COLOUR_LETTER["red"]
        claims["st"] = red if claims.get("st") == green else green
        return f"{header}.{b64url_encode(json.dumps(claims, separators=(',', ':')).encode())}.{signature}"
    if variant == 1:
        claims = json.loads(b64url_decode(payload))
        claims["sub"] = b64url_encode(rng.randbytes(HANDLE_BYTES))
        return f"{header}.{b64url_encode(json.dumps(claims, separators=(',', ':')).encode())}.{signature}"
    raw = bytearray(b64url_decode(signature))
    raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    return f"{header}.{payload}.{b64url_encode(bytes(raw))}"


def check_policy_verdict(body: dict[str, Any], *, policy_sent: bool) -> str | None:
    """`meets_policy` and `failed_rules`: null without a policy; with one, a verdict that agrees with its rules."""
    meets, failed = body.get("meets_policy"), body.get("failed_rules")
    if not policy_sent:
        return None if meets is None and failed is None else "policy verdict without a policy"
    if not isinstance(meets, bool) or not isinstance(failed, list):
        return "verify answer without a policy verdict"
    if meets != (not failed):
        return "meets_policy disagrees with failed_rules"
    if body.get("valid") is not True and failed != ["valid_token"]:
        return "a refused token meets the policy"
    return None


def check_verdict(
    body: object,
    *,
    checkpoint: str,
    expect_valid: bool | None,
    tampered: bool,
    issued: Issued,
    policy_sent: bool = False,
) -> str | None:
    """Check a 200 answer of POST /v1/verify against what the token we sent deserves."""
    if not isinstance(body, dict):
        return "verify answer is not a JSON object"
    if body.get("checkpoint") != checkpoint:
        return "verify answer names another checkpoint"
    valid, reason = body.get("valid"), body.get("reason")
    if not isinstance(valid, bool):
        return "verify answer without a verdict"
    if problem := check_policy_verdict(body, policy_sent=policy_sent):
        return problem
    if tampered:
        if valid:
            return "tampered token accepted"
        if reason not in TAMPERED_REASONS:
            return f"tampered token refused for the wrong reason ({reason})"
        return None
    if expect_valid is None:
        return None if valid or reason == "expired" else f"token refused ({reason})"
    if expect_valid:
        if not valid:
            return f"valid token refused ({reason})"
        if body.get("token_colour") != issued.colour:
            return "verdict names another colour than the token's"
        if body.get("current_colour") not in COLOUR_LETTER:
            return "verdict without the current colour"
        return None
    if valid:
        return "expired token accepted"
    if reason != "expired":
        return f"expired token refused for the wrong reason ({reason})"
    return None
