"""Two deployments on loopback for the federation tests: A (Chongqing) and B (Sichuan).

Each has its own database, Redis db, pepper, handle key and signing key; they share the federation key.
A runs on the session's test database; B on a second scratch database of its own. Both are real
aiohttp servers on 127.0.0.1 ports, so every call between them goes over HTTP.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient

from app.clients import add_client
from app.federation.peers import Peer, add_peer, remove_peer
from app.http.appkeys import FEDERATION, PG
from app.scopes import CLIENT_KINDS, RECORD_KINDS
from app.settings import Settings
from tests.support import bearer
from tests.test_ingest_helpers import csv_body, number, upload

Api = TestClient[web.Request, web.Application]

FEDERATION_KEY = secrets.token_bytes(32)
A_ISSUER, B_ISSUER = "cn-cq", "cn-sc"
# Not the session's Redis db (1-13) nor the cache tests' (14).
B_REDIS_DB = 15


@dataclass
class Deployment:
    api: Api
    settings: Settings
    db: asyncpg.Connection
    keys: dict[str, str]  # client kind -> secret

    @property
    def url(self) -> str:
        return str(self.api.make_url("")).rstrip("/")

    def peer(self, *, vaccination_source: bool = True, name: str | None = None) -> Peer:
        """This deployment as another one's trust list names it."""
        return Peer(
            self.settings.issuer,
            name or f"deployment {self.settings.issuer}",
            f"{self.url}/.well-known/jwks.json",
            ("ES256",),
            vaccination_source,
            self.url,
        )

    async def trust(self, *peers: Peer) -> None:
        """Put peers on this deployment's trust list and load them (and their keys) at once."""
        for peer in peers:
            await add_peer(self.db, peer)
        await self.reload()

    async def distrust(self, issuer: str) -> None:
        await remove_peer(self.db, issuer)
        await self.reload()

    async def reload(self) -> None:
        federation = self.api.app[FEDERATION]
        await federation.load(self.api.app[PG])
        await federation.keys.refresh(federation.session, force=True)

    async def register(self, *indexes: int) -> None:
        rows = (f"resident,{number(i)},张{i}" for i in indexes)
        _, batch = await upload(self.api, self.keys["agency"], "population", csv_body("id_type,id_number,name", *rows))
        assert batch["counts"]["accepted"] == len(indexes), batch

    async def vaccinate(self, *rows: tuple[int, str, int, str]) -> None:
        lines = (f"{number(i)},{product},{dose},{on}" for i, product, dose, on in rows)
        body = csv_body("id_number,product,dose,vaccinated_on", *lines)
        _, batch = await upload(self.api, self.keys["agency"], "vaccination", body)
        assert batch["counts"]["accepted"] == len(rows), batch

    async def status(self, i: int, **extra: object) -> dict[str, Any]:
        r = await self.api.post(
            "/v1/status",
            json={"id_type": "resident", "id_number": number(i), **extra},
            headers=bearer(self.keys["citizen-backend"]),
        )
        assert r.status == 200, await r.text()
        answer: dict[str, Any] = await r.json()
        return answer

    async def verify(self, token: str, **extra: object) -> dict[str, Any]:
        r = await self.api.post(
            "/v1/verify", json={"token": token, "checkpoint": "gate-1", **extra}, headers=bearer(self.keys["scanner"])
        )
        assert r.status == 200, await r.text()
        answer: dict[str, Any] = await r.json()
        return answer


async def client_secrets(db: asyncpg.Connection) -> dict[str, str]:
    scopes = {"agency": RECORD_KINDS}
    return {kind: (await add_client(db, f"test-{kind}", kind, scopes.get(kind, ()))).secret for kind in CLIENT_KINDS}
