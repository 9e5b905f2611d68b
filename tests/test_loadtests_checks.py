"""The load test's answer checks and capacity arithmetic, without Locust: each must catch what it claims."""

from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path

from loadtests.capacity import report
from loadtests.checks import (
    Expected,
    Issued,
    check_status,
    check_verdict,
    expected_validity,
    tamper,
    verifier_from_jwks,
)
from loadtests.shared import TokenPool
from signing import KeyRecord, TokenSigner, generate_private_key, jwks_document
from signing.colours import COLOUR_LETTER
from signing.encoding import b64url_encode

NOW = 1_700_000_000


def _signer() -> tuple[TokenSigner, dict[str, list[dict[str, str]]]]:
    record = KeyRecord.from_private_key(generate_private_key())
    return TokenSigner(record, "healthcode", 300), jwks_document([record])


def _answer(signer: TokenSigner, colour: str = "green", popup: bool = False) -> dict[str, object]:
    sub = b64url_encode(bytes(44))  # a handle's size; the checks never open it
    letter = COLOUR_LETTER[colour]
    tested = NOW - 5 * 3600
    return {
        "colour": colour,
        "popup": popup,
        "vaccination": {"doses": 2, "complete": True},
        "last_test": {"sampled_at": tested, "result": "negative", "hours_ago": 5},
        "version": 1,
        "token": signer.sign_status(sub, letter, int(popup), 1, NOW, ver=1, negative_test_at=tested),
        "token_expires_at": NOW + 300,
    }


def test_status_answers_are_checked_against_the_published_keys() -> None:
    signer, jwks = _signer()
    verifier = verifier_from_jwks(jwks, "healthcode")
    good = _answer(signer, "yellow", popup=True)
    problem, issued = check_status(good, verifier, NOW, Expected("yellow", True, True))
    assert problem is None and issued == Issued(str(good["token"]), NOW + 300, "yellow")

    assert check_status({**good, "token": None}, verifier, NOW)[0] == "status answer without a token"
    assert (
        check_status({**good, "version": 2}, verifier, NOW)[0]
        == "token status version differs from the answer's version"
    )
    assert (
        check_status({**good, "colour": "green"}, verifier, NOW)[0] == "token colour differs from the answer's colour"
    )
    assert check_status({**good, "popup": False}, verifier, NOW)[0] is not None
    nt_differs = "token's last negative test differs from the answer's last test"
    assert check_status({**good, "last_test": None}, verifier, NOW)[0] == nt_differs
    positive = {"sampled_at": NOW - 5 * 3600, "result": "positive", "hours_ago": 5}
    assert check_status({**good, "last_test": positive}, verifier, NOW)[0] == nt_differs
    untested = {**good, "last_test": None, "token": signer.sign_status("h", "Y", 1, 1, NOW, ver=1)}
    assert check_status(untested, verifier, NOW)[0] is None
    assert check_status({**good, "subject": "AAAA"}, verifier, NOW)[0] == "status answer carries the pseudonym"
    assert check_status(good, verifier, NOW, Expected("red", True, True))[0] == "colour yellow, expected red"
    assert check_status(good, None, NOW)[0] == "no published keys to verify the token with"
    # A token signed by a key the JWKS does not publish fails, as does an expired one.
    other, _ = _signer()
    assert "does not verify" in str(check_status(_answer(other), verifier, NOW)[0])
    assert "(expired)" in str(check_status(good, verifier, NOW + 300)[0])


def test_tampered_tokens_never_verify() -> None:
    signer, jwks = _signer()
    verifier = verifier_from_jwks(jwks, "healthcode")
    token = str(_answer(signer, "red")["token"])
    rng = random.Random(0)
    for _ in range(30):
        forged = tamper(token, rng)
        assert forged != token
        assert check_status({**_answer(signer, "red"), "token": forged}, verifier, NOW)[0] is not None


def test_verify_verdicts() -> None:
    issued = Issued("t", NOW + 10, "green")
    ok = {"valid": True, "reason": "ok", "checkpoint": "c1", "token_colour": "green", "current_colour": "green"}
    refused = {"valid": False, "reason": "expired", "checkpoint": "c1"}
    forged = {"valid": False, "reason": "bad_signature", "checkpoint": "c1"}

    def verdict(body: dict[str, object], expect_valid: bool | None, tampered: bool) -> str | None:
        return check_verdict(body, checkpoint="c1", expect_valid=expect_valid, tampered=tampered, issued=issued)

    assert expected_validity(issued, NOW) is True
    assert expected_validity(issued, NOW + 10) is None
    assert expected_validity(issued, NOW + 11) is False
    assert verdict(ok, True, False) is None
    assert verdict(refused, False, False) is None
    assert verdict(forged, None, True) is None
    assert verdict(ok, None, True) == "tampered token accepted"
    assert verdict(ok, False, False) == "expired token accepted"
    assert verdict(refused, True, False) == "valid token refused (expired)"
    assert verdict({**ok, "token_colour": "red"}, True, False) is not None
    assert verdict({**ok, "checkpoint": "c2"}, True, False) is not None


def test_policy_verdicts() -> None:
    issued = Issued("t", NOW + 10, "green")
    ok = {"valid": True, "reason": "ok", "checkpoint": "c1", "token_colour": "green", "current_colour": "green"}
    forged = {"valid": False, "reason": "bad_signature", "checkpoint": "c1"}

    def verdict(body: dict[str, object], expect_valid: bool | None, policy_sent: bool) -> str | None:
        return check_verdict(
            body, checkpoint="c1", expect_valid=expect_valid, tampered=not body["valid"], issued=issued,
            policy_sent=policy_sent,
        )  # fmt: skip

    met = {"meets_policy": True, "failed_rules": []}
    unmet = {"meets_policy": False, "failed_rules": ["test_age"]}
    assert verdict({**ok, **met}, True, True) is None
    assert verdict({**ok, **unmet}, True, True) is None
    assert verdict({**forged, "meets_policy": False, "failed_rules": ["valid_token"]}, None, True) is None
    assert verdict({**ok, "meets_policy": None, "failed_rules": None}, True, False) is None
    assert verdict({**ok, "meets_policy": None, "failed_rules": None}, True, True) == (
        "verify answer without a policy verdict"
    )
    assert verdict({**ok, **met}, True, False) == "policy verdict without a policy"
    assert verdict({**ok, "meets_policy": True, "failed_rules": ["test_age"]}, True, True) == (
        "meets_policy disagrees with failed_rules"
    )
    assert verdict({**forged, **met}, None, True) == "a refused token meets the policy"


def test_token_pool_keeps_tokens_until_they_expire() -> None:
    pool = TokenPool(recent=3, aging=2)
    for i in range(5):
        pool.add(Issued(f"t{i}", NOW + i, "green"))
    assert len(pool) == 3
    assert {pool.pick(random.Random(i)).token for i in range(50)} == {"t2", "t3", "t4"}  # type: ignore[union-attr]
    assert pool.take_expired(NOW) is None
    assert pool.take_expired(NOW + 1).token == "t0"  # type: ignore[union-attr]
    assert pool.take_expired(NOW + 1) is None
    assert pool.take_expired(NOW + 2).token == "t1"  # type: ignore[union-attr]


def _write(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def test_capacity_report_arithmetic(tmp_path: Path) -> None:
    stats = ["Type", "Name", "Request Count", "Failure Count", "Requests/s", "99%"]
    _write(tmp_path / "locust_stats.csv", stats, [
        ["POST", "/v1/status (open)", 30000, 0, 1000, 20],
        ["POST", "/v1/verify (valid)", 20000, 3, 600, 30],
        ["", "Aggregated", 50000, 3, 1600, 30],
    ])  # fmt: skip
    samples = []
    status = verify = 0
    cpu = 0.0
    # 10 s of status alone at 500 µs each, 10 s of verify alone at 1 ms each, 10 s mixed (2:1).
    for second in range(31):
        samples.append(
            [second, cpu, second * 0.01, second * 0.002, json.dumps({"/v1/status": status, "/v1/verify": verify})]
        )
        if second < 10:
            status += 1000
            cpu += 0.5
        elif second < 20:
            verify += 500
            cpu += 0.5
        else:
            status += 600
            verify += 300
            cpu += 600 * 0.0005 + 300 * 0.001
    _write(tmp_path / "server_samples.csv", ["t", "server_cpu", "redis_cpu", "postgres_cpu", "routes"], samples)
    text = report(tmp_path, p99_target_ms=50, utilisation=0.7)
    assert "0.7 / 500 µs CPU per request" in text
    assert "0.7 / 1,000 µs CPU per request" in text
    # Mixed phase: 2/3 status at 500 µs and 1/3 verify at 1000 µs = 667 µs a query.
    assert "67% status, 33% verify" in text
    assert "check: the mixed phase used 1.00x" in text
    per_node = 0.7 / (2 / 3 * 0.0005 + 1 / 3 * 0.001) * 86_400
    api_cores = -(-(1e9 / 86_400 * 10) * (2 / 3 * 0.0005 + 1 / 3 * 0.001) // 0.7)
    line = next(ln for ln in text.splitlines() if ln.startswith("capacity: "))
    assert re.fullmatch(r"capacity: [\d,]+ queries/day per node .*; 1e9/day at 10x peak needs .*", line)
    assert f"{per_node:,.0f} queries/day per node" in line
    assert f"needs {int(api_cores):,} API cores" in line
    assert "errors: 3 of 50,000 requests" in text
    assert (tmp_path / "capacity.txt").read_text().strip() == text
