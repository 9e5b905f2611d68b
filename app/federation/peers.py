"""The trust list: peer deployments whose tokens this one accepts and whose vaccination records it may ask for.

Stored in Postgres (`peers`, sql/013_federation.sql) and managed with `healthcode peers`; every process
re-reads it in the background, so a peer removed is distrusted everywhere within a refresh.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from app.db import Conn
from signing.keys import ALGORITHMS

_ISSUER: Final = re.compile(r"^[A-Za-z0-9._:/-]{1,200}$")


class PeerError(ValueError):
    """A peer's definition is refused; the message says which part."""


@dataclass(frozen=True, slots=True)
class Peer:
    issuer: str  # the `iss` of its tokens
    display_name: str
    jwks_url: str
    algorithms: tuple[str, ...] = ("ES256",)
    vaccination_source: bool = False  # asked for a person's vaccinations when a status needs them
    api_base_url: str | None = None  # where its peer API answers

    def __post_init__(self) -> None:
        if not _ISSUER.match(self.issuer):
            raise PeerError(f"issuer {self.issuer!r} must be 1-200 letters, digits or ._:/-")
        if not self.display_name.strip():
            raise PeerError("give the peer a display name")
        for name, url in (("jwks_url", self.jwks_url), ("api_base_url", self.api_base_url)):
            if url is not None and (urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc):
                raise PeerError(f"{name} must be an http(s) URL, got {url!r}")
        unknown = set(self.algorithms) - ALGORITHMS
        if not self.algorithms or unknown:
            raise PeerError(f"algorithms must be some of {sorted(ALGORITHMS)}, got {list(self.algorithms)}")
        if self.vaccination_source and self.api_base_url is None:
            raise PeerError("a vaccination source needs api_base_url (where its peer API answers)")


_COLUMNS: Final = "issuer, display_name, jwks_url, algorithms, vaccination_source, api_base_url"


async def add_peer(conn: Conn, peer: Peer) -> bool:
    """Add or replace a peer; True when it was new."""
    inserted: bool = await conn.fetchval(
        f"""INSERT INTO peers ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (issuer) DO UPDATE SET display_name = excluded.display_name, jwks_url = excluded.jwks_url,
                algorithms = excluded.algorithms, vaccination_source = excluded.vaccination_source,
                api_base_url = excluded.api_base_url
            RETURNING xmax = 0""",
        peer.issuer,
        peer.display_name,
        peer.jwks_url,
        list(peer.algorithms),
        peer.vaccination_source,
        peer.api_base_url,
    )
    return inserted


async def remove_peer(conn: Conn, issuer: str) -> bool:
    return bool(await conn.fetchval("DELETE FROM peers WHERE issuer = $1 RETURNING true", issuer))


async def list_peers(conn: Conn) -> list[Peer]:
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM peers ORDER BY issuer")
    return [
        Peer(
            r["issuer"],
            r["display_name"],
            r["jwks_url"],
            tuple(r["algorithms"]),
            r["vaccination_source"],
            r["api_base_url"],
        )
        for r in rows
    ]
