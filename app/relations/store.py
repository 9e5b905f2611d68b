"""Relations and look-ups in Postgres: register, end, list; the look-up on behalf of a relative, recorded.

A relation is live while it is not ended and, for a guardian, before the minor's 18th birthday. A look-up
finds the live relation and records itself in one statement, so no look-up is answered unrecorded: if
the record cannot be written the look-up fails (503), it is never answered without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from app.db import Conn
from app.identity import Identity, mask_number
from app.relations.errors import RelationExists, RelationNotFound
from app.relations.model import Registration

_LIVE: Final = "r.ended_at IS NULL AND (r.valid_until IS NULL OR r.valid_until > to_timestamp($3))"

# A guardian relation whose minor has come of age ends by itself; it is marked so before the pair registers
# again (it would otherwise hold the pair's one live slot).
_LAPSE = f"""UPDATE relations r SET ended_at = r.valid_until, ended_by = 'lapsed'
    WHERE r.holder = $1 AND r.relative = $2 AND r.ended_at IS NULL AND NOT ({_LIVE})"""
_LIVE_OF_PAIR = f"SELECT id, kind FROM relations r WHERE r.holder = $1 AND r.relative = $2 AND {_LIVE}"
_ADD = """INSERT INTO relations (holder, relative, kind, holder_id_type, holder_masked_number, relative_id_type,
        relative_masked_number, attestation_ref, client_id, valid_until, created_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, to_timestamp($10), to_timestamp($11))
    RETURNING id"""
_AUDIT = "INSERT INTO audit_log (actor, action, pseudonym, detail) VALUES ($1, $2, $3, $4)"

_VIEW = """SELECT r.id, r.kind, r.holder, r.relative, r.holder_id_type, r.holder_masked_number, r.relative_id_type,
        r.relative_masked_number, r.attestation_ref IS NOT NULL AS attested,
        extract(epoch FROM r.created_at)::bigint AS created_at,
        extract(epoch FROM r.valid_until)::bigint AS valid_until,
        extract(epoch FROM r.ended_at)::bigint AS ended_at, r.ended_by
    FROM relations r"""

# Finds the live relation and records the look-up in one statement: nothing is answered unrecorded.
_LOOK_UP = f"""WITH r AS (SELECT r.id, r.kind FROM relations r WHERE r.holder = $1 AND r.relative = $2 AND {_LIVE})
    INSERT INTO relation_lookups (relation_id, relative, holder, kind, client_id, looked_at)
    SELECT r.id, $2, $1, r.kind, $4, to_timestamp($3) FROM r
    RETURNING relation_id, kind"""

_LOOKUPS = """SELECT l.id, extract(epoch FROM l.looked_at)::bigint AS looked_at, l.relation_id, l.kind,
        r.holder_id_type, r.holder_masked_number, coalesce(c.name, '') AS client
    FROM relation_lookups l JOIN relations r ON r.id = l.relation_id
    LEFT JOIN api_clients c ON c.id = l.client_id
    WHERE l.relative = $1 AND ($2::bigint IS NULL OR l.id < $2)
    ORDER BY l.id DESC LIMIT $3"""


@dataclass(frozen=True, slots=True)
class Party:
    """One side of a relation as the store keeps it: the pseudonym and the masked document."""

    pseudonym: bytes
    id_type: str
    masked_number: str

    @classmethod
    def of(cls, identity: Identity, pseudonym: bytes) -> Party:
        return cls(pseudonym, identity.id_type, mask_number(identity.number))


@dataclass(frozen=True, slots=True)
class Registered:
    relation: dict[str, Any]
    created: bool  # False: the same relation was live already


@dataclass(frozen=True, slots=True)
class LookUp:
    relation_id: int
    kind: str


def state(row: Any, now: int) -> str:
    if row["ended_at"] is not None:
        return "lapsed" if row["ended_by"] == "lapsed" else "ended"
    if row["valid_until"] is not None and row["valid_until"] <= now:
        return "lapsed"
    return "live"


def view(row: Any, now: int, asker: bytes | None = None) -> dict[str, Any]:
    """A relation as its parties see it: both people masked, never a pseudonym; the asker's role if given."""
    current = state(row, now)
    ended_at, ended_by = row["ended_at"], row["ended_by"]
    if current == "lapsed":  # whether or not a registration of the pair has marked it yet
        ended_at, ended_by = row["valid_until"], "lapsed"
    answer = {
        "id": row["id"],
        "kind": row["kind"],
        "state": current,
        "holder": {"id_type": row["holder_id_type"], "id_number": row["holder_masked_number"]},
        "relative": {"id_type": row["relative_id_type"], "id_number": row["relative_masked_number"]},
        "attested": row["attested"],
        "created_at": row["created_at"],
        "valid_until": row["valid_until"],
        "ended_at": ended_at,
        "ended_by": ended_by,
    }
    if asker is not None:
        answer["role"] = "holder" if bytes(row["holder"]) == asker else "relative"
    return answer


async def register(
    conn: Conn, holder: Party, relative: Party, reg: Registration, *, client_id: int, client_name: str, now: int
) -> Registered:
    """Registers the relation, or finds the same one live already; another kind live for the pair refuses."""
    async with conn.transaction():
        # Two registrations of one pair take turns: the second sees the first's row.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))", (holder.pseudonym + relative.pseudonym).hex()
        )
        await conn.execute(_LAPSE, holder.pseudonym, relative.pseudonym, now)
        live = await conn.fetchrow(_LIVE_OF_PAIR, holder.pseudonym, relative.pseudonym, now)
        if live is not None:
            if live["kind"] != reg.kind:
                raise RelationExists(
                    f"a {live['kind']} relation between these two people is registered (id {live['id']}); end it "
                    f"before registering a {reg.kind} relation",
                    live["id"],
                )
            relation_id, created = int(live["id"]), False
        else:
            relation_id = await conn.fetchval(
                _ADD,
                holder.pseudonym,
                relative.pseudonym,
                reg.kind,
                holder.id_type,
                holder.masked_number,
                relative.id_type,
                relative.masked_number,
                reg.attestation_ref,
                client_id,
                reg.valid_until,
                now,
            )
            created = True
            detail = {"relation_id": relation_id, "kind": reg.kind, "client_id": client_id}
            await conn.execute(_AUDIT, client_name, "relation.register", relative.pseudonym, detail)
        row = await conn.fetchrow(f"{_VIEW} WHERE r.id = $1", relation_id)
    return Registered(view(row, now, holder.pseudonym), created)


async def end(
    conn: Conn, relation_id: int, asker: bytes, *, client_id: int, client_name: str, now: int
) -> dict[str, Any]:
    """Ends a relation at the asking party's word (holder or relative); ending an ended one changes nothing."""
    async with conn.transaction():
        row = await conn.fetchrow(
            f"{_VIEW} WHERE r.id = $1 AND (r.holder = $2 OR r.relative = $2) FOR UPDATE", relation_id, asker
        )
        if row is None:
            raise RelationNotFound(f"no relation {relation_id} has this person as a party")
        if row["ended_at"] is None:
            role = "holder" if bytes(row["holder"]) == asker else "relative"
            await conn.execute(
                """UPDATE relations SET ended_at = to_timestamp($2), ended_by = $3, ended_client_id = $4
                   WHERE id = $1""",
                relation_id,
                now,
                role,
                client_id,
            )
            detail = {"relation_id": relation_id, "kind": row["kind"], "ended_by": role, "client_id": client_id}
            await conn.execute(_AUDIT, client_name, "relation.end", bytes(row["relative"]), detail)
            row = await conn.fetchrow(f"{_VIEW} WHERE r.id = $1", relation_id)
    return view(row, now, asker)


async def relations_of(conn: Conn, person: bytes, now: int, limit: int) -> list[dict[str, Any]]:
    """The relations a person is a party to, newest first."""
    rows = await conn.fetch(
        f"{_VIEW} WHERE r.holder = $1 OR r.relative = $1 ORDER BY r.id DESC LIMIT $2", person, limit
    )
    return [view(row, now, person) for row in rows]


async def look_up(conn: Conn, holder: bytes, relative: bytes, *, client_id: int, now: int) -> LookUp | None:
    """The live relation that lets `holder` see `relative`, the look-up recorded; None if there is none."""
    row = await conn.fetchrow(_LOOK_UP, holder, relative, now, client_id)
    return None if row is None else LookUp(int(row["relation_id"]), str(row["kind"]))


async def lookups_of(
    conn: Conn, relative: bytes, *, before: int | None, limit: int
) -> tuple[list[dict[str, Any]], int | None]:
    """Who looked `relative` up, newest first, a page at a time: (entries, the `before` of the next page)."""
    rows = await conn.fetch(_LOOKUPS, relative, before, limit)
    entries = [
        {
            "id": row["id"],
            "looked_at": row["looked_at"],
            "relation_id": row["relation_id"],
            "kind": row["kind"],
            "by": {"id_type": row["holder_id_type"], "id_number": row["holder_masked_number"]},
            "client": row["client"],
        }
        for row in rows
    ]
    return entries, (rows[-1]["id"] if len(rows) == limit else None)
