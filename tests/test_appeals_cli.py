"""`healthcode appeals list|show|decide`: operators review appeals from the command line, as the operator
whose key is in HEALTHCODE_OPERATOR_KEY; the same two-operator rule as over the API."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
import pytest

from app.cli import main
from app.settings import Settings
from tests import appeals_world
from tests.appeals_world import World

world = appeals_world.world  # the fixture, shared with the other appeals tests
Run = Callable[..., Coroutine[Any, Any, tuple[int, str, str]]]


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, settings: Settings, capsys: pytest.CaptureFixture[str]) -> Run:
    """Run `healthcode ARGS...` as the operator with key `as_key`; returns (exit code, stdout, stderr)."""
    for name in ("HEALTHCODE_PEPPER_FILE", "HEALTHCODE_RULESET", "HEALTHCODE_OPERATOR_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("HEALTHCODE_PEPPER", settings.pepper.hex())
    monkeypatch.setenv("HEALTHCODE_KEYS_DIR", str(settings.keys_dir))

    async def call(*args: str, as_key: str | None) -> tuple[int, str, str]:
        if as_key is None:
            monkeypatch.delenv("HEALTHCODE_OPERATOR_KEY", raising=False)
        else:
            monkeypatch.setenv("HEALTHCODE_OPERATOR_KEY", as_key)
        capsys.readouterr()
        code = await asyncio.to_thread(main, list(args))  # main() runs its own event loop
        out, err = capsys.readouterr()
        return code, out, err

    return call


def key(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


async def test_operators_review_from_the_command_line(world: World, run: Run) -> None:
    subject = await world.red_person()
    appeal_id = (await world.file())["id"]
    alice, bob = key(world.alice), key(world.bob)

    # Only an operator's key will do.
    for who in (None, "hc_unknown", key(world.citizen)):
        code, _, err = await run("appeals", "list", as_key=who)
        assert code == 1 and "HEALTHCODE_OPERATOR_KEY" in err, who

    code, out, _ = await run("appeals", "list", "--state", "open", as_key=alice)
    assert code == 0 and out.split()[:3] == [str(appeal_id), "open", "wrong_test_result"]
    assert "now red" in out and "500103" not in out.replace("50**", "")  # masked, never the number
    code, out, _ = await run("appeals", "list", "--state", "rejected", as_key=alice)
    assert (code, out) == (0, "")

    code, out, _ = await run(
        "appeals", "decide", str(appeal_id), "propose", "--colour", "green", "--hours", "2", "--reason", "lab mix-up",
        as_key=alice,
    )  # fmt: skip
    assert code == 0 and out.strip().endswith("by test-operator; now proposed"), out
    code, out, _ = await run("appeals", "show", str(appeal_id), as_key=bob)
    shown = orjson.loads(out)
    proposal = str(shown["pending_proposal"]["id"])
    assert (code, shown["state"], shown["person"]["colour"]) == (0, "proposed", "red")

    # The proposer cannot approve it; the second operator can.
    approve = ("appeals", "decide", str(appeal_id), "approve", "--proposal", proposal, "--reason", "checked the log")
    code, _, err = await run(*approve, as_key=alice)
    assert code == 1 and "another operator must approve" in err
    assert await world.colours(subject) == ("red", "red", "R")
    code, out, _ = await run(*approve, as_key=bob)
    assert code == 0 and out.strip().endswith("by bob; now upheld"), out
    assert await world.colours(subject) == ("green", "green", "G")

    code, _, _ = await run("appeals", "decide", str(appeal_id), "end", "--reason", "retest positive", as_key=bob)
    assert code == 0
    assert await world.colours(subject) == ("red", "red", "R")
    code, _, err = await run("appeals", "decide", str(appeal_id), "end", "--reason", "again please", as_key=alice)
    assert code == 1 and "nothing to end" in err

    # A rejection takes one operator; a bad reason or a missing appeal is refused with a message.
    other = (await world.file(category="other"))["id"]
    code, _, err = await run("appeals", "decide", str(other), "reject", "--reason", "no", as_key=alice)
    assert code == 1 and "reason must be at least 3 characters" in err
    code, out, _ = await run("appeals", "decide", str(other), "reject", "--reason", "records are right", as_key=alice)
    assert code == 0 and out.strip().endswith("now rejected")
    code, _, err = await run("appeals", "show", str(other + 100), as_key=alice)
    assert code == 1 and f"no appeal {other + 100}" in err
    actions = await world.db.fetch(
        "SELECT actor, action FROM audit_log WHERE action LIKE 'appeal.%' AND pseudonym = $1 ORDER BY id", subject
    )
    assert [(r["actor"], r["action"]) for r in actions] == [
        ("test-citizen-backend", "appeal.file"),
        ("test-operator", "appeal.propose"),
        ("bob", "appeal.approve"),
        ("bob", "appeal.end"),
        ("test-citizen-backend", "appeal.file"),
        ("test-operator", "appeal.reject"),
    ]
