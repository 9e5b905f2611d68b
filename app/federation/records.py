"""Vaccination records between peers: what this deployment answers a peer, and how a peer's answer is kept.

Answering: the records this deployment itself holds for a federation pseudonym (never ones it learnt from
a peer, so records are not laundered around the federation), with their origin.

Keeping: a peer's records are stored as vaccination records of origin `peer` (`origin_peer`,
`fetched_at`), replacing what that peer said before, and the person is recomputed through the one write
path (app/statuses/publish.py). Stored rather than only folded into one answer, because the umbrella
mark is part of the status: the token's `vac` claim, `/v1/verify`'s current status and every later
status answer must agree with the answer that consulted the peer, and only a stored status gives them
all the same mark (and the same version guard) without asking the peer again. A record this
deployment holds itself wins over a peer's with the same product and dose; a record the peer withdraws
is withdrawn here the next time the peer is asked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Any, Final

from app.db import Conn

# An ISO 3166-1 alpha-2 code, or a subdivision of ISO 3166-2 (as sql/013's check).
ORIGIN: Final = re.compile(r"[A-Z]{2}(-[A-Z0-9]{1,3})?")
_ANSWER: Final = """
    SELECT v.product, v.dose, v.vaccinated_on, coalesce(v.origin_code, $2) AS origin,
           coalesce(v.source_agency, c.name, '') AS agency
    FROM federation_subjects f
    JOIN vaccinations v ON v.pseudonym = f.pseudonym
    LEFT JOIN batches b ON b.id = v.batch_id
    LEFT JOIN api_clients c ON c.id = b.client_id
    WHERE f.federation_pseudonym = $1 AND v.origin_peer IS NULL
    ORDER BY v.vaccinated_on, v.dose, v.product"""


@dataclass(frozen=True, slots=True)
class PeerVaccination:
    product: str
    dose: int
    vaccinated_on: date
    origin: str  # ISO 3166 code of the province or country that gave it
    agency: str  # the agency that reported it, as the answering peer names it

    def as_claim(self) -> dict[str, Any]:
        return {
            "product": self.product,
            "dose": self.dose,
            "vaccinated_on": self.vaccinated_on.isoformat(),
            "origin": self.origin,
            "agency": self.agency,
        }

    @classmethod
    def from_claim(cls, claim: object) -> PeerVaccination:
        """From a peer's signed answer; ValueError for anything not shaped as we send it."""
        if not isinstance(claim, dict):
            raise ValueError("a vaccination must be an object")
        product, dose, on = claim.get("product"), claim.get("dose"), claim.get("vaccinated_on")
        origin, agency = claim.get("origin"), claim.get("agency", "")
        if not (isinstance(product, str) and 0 < len(product) <= 64):
            raise ValueError("product must be a short string")
        if type(dose) is not int or not 1 <= dose <= 10:
            raise ValueError("dose must be 1 to 10")
        if not (isinstance(on, str) and isinstance(origin, str) and isinstance(agency, str)):
            raise ValueError("vaccinated_on, origin and agency must be strings")
        return cls(product, dose, date.fromisoformat(on), origin[:16], agency[:200])


async def held_vaccinations(conn: Conn, federation_pseudonym: bytes, region_code: str) -> list[PeerVaccination]:
    """This deployment's own records of the person, for a peer's look-up (empty for a stranger)."""
    rows = await conn.fetch(_ANSWER, federation_pseudonym, region_code)
    return [PeerVaccination(r["product"], r["dose"], r["vaccinated_on"], r["origin"], r["agency"]) for r in rows]


async def keep_peer_vaccinations(
    conn: Conn, subject: bytes, peer: str, vaccinations: list[PeerVaccination], products: frozenset[str]
) -> bool:
    """Store what `peer` answered as the person's records of that peer; True when anything changed
    (the caller then recomputes the person). Products the rule set does not know are left out."""
    known = [v for v in vaccinations if v.product in products and ORIGIN.fullmatch(v.origin)]
    # Most look-ups change nothing: compare first, so that they cost a read and no write (a write
    # transaction's commit waits for the WAL flush, milliseconds against a read's fraction of one).
    held = await conn.fetch(
        """SELECT product, dose, vaccinated_on, origin_code, source_agency, origin_peer
           FROM vaccinations WHERE pseudonym = $1 AND (origin_peer IS NULL OR origin_peer = $2)""",
        subject,
        peer,
    )
    ours = {(r["product"], r["dose"]) for r in held if r["origin_peer"] is None}
    stored = {
        (r["product"], r["dose"], r["vaccinated_on"], r["origin_code"], r["source_agency"])
        for r in held
        if r["origin_peer"]
    }
    wanted = {
        (v.product, v.dose, v.vaccinated_on, v.origin, v.agency) for v in known if (v.product, v.dose) not in ours
    }
    if stored == wanted:
        return False
    async with conn.transaction():  # products and origins the rule set and the schema refuse are left out
        removed = await conn.fetch(
            """DELETE FROM vaccinations WHERE pseudonym = $1 AND origin_peer = $2
                   AND (product, dose) NOT IN (SELECT * FROM unnest($3::text[], $4::smallint[]))
               RETURNING product""",
            subject,
            peer,
            [v.product for v in known],
            [v.dose for v in known],
        )
        changed = await conn.fetch(
            """INSERT INTO vaccinations AS t (pseudonym, product, dose, vaccinated_on, site, origin_code,
                                              source_agency, origin_peer, fetched_at)
               SELECT $1, p, d, o, '', c, a, $2, now()
               FROM unnest($3::text[], $4::smallint[], $5::date[], $6::text[], $7::text[]) AS u(p, d, o, c, a)
               ON CONFLICT (pseudonym, product, dose) DO UPDATE
                   SET vaccinated_on = excluded.vaccinated_on, origin_code = excluded.origin_code,
                       source_agency = excluded.source_agency, fetched_at = excluded.fetched_at
                   WHERE t.origin_peer = excluded.origin_peer
                     AND (t.vaccinated_on, t.origin_code, t.source_agency)
                         IS DISTINCT FROM (excluded.vaccinated_on, excluded.origin_code, excluded.source_agency)
               RETURNING product""",
            subject,
            peer,
            [v.product for v in known],
            [v.dose for v in known],
            [v.vaccinated_on for v in known],
            [v.origin for v in known],
            [v.agency for v in known],
        )
        if not removed and not changed:
            return False
        # Its inputs changed: the recompute's status must outrank every earlier one (sql/004).
        await conn.execute("UPDATE subjects SET revision = revision + 1 WHERE pseudonym = $1", subject)
    return True
