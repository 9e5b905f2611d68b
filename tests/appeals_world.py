"""An appeals world for tests: a citizen backend, another one, two operators, a scanner, and a red person.

A fixture module: test modules import `world` (and `World`) from here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from app.clients import add_client
from app.http.appkeys import CLIENTS, PUBLISHER, REDIS
from app.identity import Identity, mask_number, pseudonym
from app.settings import Settings
from cache.entry import unpack
from cache.keys import status_field
from tests.support import bearer

Api = TestClient[web.Request, web.Application]
HOUR = 3600
NUMBER = "500103199003071239"
OTHER_NUMBER = "11010519491231002X"


@dataclass
class World:
    api: Api
    db: asyncpg.Connection
    pepper: bytes
    citizen: dict[str, str]  # headers of the citizen backend that files
    other_citizen: dict[str, str]  # another citizen backend
    alice: dict[str, str]  # an operator
    bob: dict[str, str]  # a second operator
    scanner: dict[str, str]

    async def red_person(self, number: str = NUMBER) -> bytes:
        """A person with a positive test an hour ago, the status computed through the write path: red."""
        subject = pseudonym(Identity("resident", number), self.pepper)
        await self.db.execute(
            "INSERT INTO subjects (pseudonym, id_type, masked_name, masked_number) VALUES ($1, 'resident', '王*', $2)",
            subject,
            mask_number(number),
        )
        await self.db.execute(
            """INSERT INTO nucleic_tests (pseudonym, sampled_at, result, lab)
               VALUES ($1, now() - interval '1 hour', 'positive', 'lab-1')""",
            subject,
        )
        await self.api.app[PUBLISHER].recompute(self.db, [subject], int(time.time()))
        assert await self.colours(subject, number) == ("red", "red", "R")
        return subject

    async def colours(self, subject: bytes, number: str = NUMBER) -> tuple[str, str, str]:
        """The colour stored in Postgres, the one in Redis, and the one in the next token."""
        stored = await self.db.fetchval("SELECT colour FROM statuses WHERE pseudonym = $1", subject)
        raw = await self.api.app[REDIS].hget(*status_field(subject))
        assert isinstance(raw, bytes)
        r = await self.api.post("/v1/status", json={"id_number": number}, headers=self.citizen)
        assert r.status == 200, await r.text()
        claims = jwt.decode((await r.json())["token"], options={"verify_signature": False})
        return stored, unpack(raw).colour, claims["st"]

    async def file(self, number: str = NUMBER, **fields: Any) -> dict[str, Any]:
        body = {
            "id_type": "resident",
            "id_number": number,
            "category": "wrong_test_result",
            "text": "The positive result is not mine: I was tested at another site that morning.",
            "contact_ref": "wx-msg-7f3a",
            **fields,
        }
        r = await self.api.post("/v1/appeals", json=body, headers=self.citizen)
        assert r.status == 201, await r.text()
        answer: dict[str, Any] = await r.json()
        assert r.headers["Location"] == f"/v1/appeals/{answer['id']}"
        return answer

    async def decide(self, operator: dict[str, str], appeal_id: int, status: int, **body: Any) -> dict[str, Any]:
        r = await self.api.post(f"/v1/appeals/{appeal_id}/decisions", json=body, headers=operator)
        assert r.status == status, await r.text()
        answer: dict[str, Any] = await r.json()
        return answer

    async def show(self, who: dict[str, str], appeal_id: int) -> dict[str, Any]:
        r = await self.api.get(f"/v1/appeals/{appeal_id}", headers=who)
        assert r.status == 200, await r.text()
        answer: dict[str, Any] = await r.json()
        return answer


@pytest.fixture
async def world(api: Api, db: asyncpg.Connection, settings: Settings, client_keys: dict[str, str]) -> World:
    other = (await add_client(db, "other-backend", "citizen-backend")).secret
    bob = (await add_client(db, "bob", "operator")).secret
    await api.app[CLIENTS].refresh(db)
    return World(
        api,
        db,
        settings.pepper,
        citizen=bearer(client_keys["citizen-backend"]),
        other_citizen=bearer(other),
        alice=bearer(client_keys["operator"]),
        bob=bearer(bob),
        scanner=bearer(client_keys["scanner"]),
    )
