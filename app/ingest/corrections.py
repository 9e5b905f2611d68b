"""Merging the rows of a person's records: insert, correct or retract, a chunk of staged rows at a time.

A record's natural key (the primary key of its table) names it; its value is the rest. A staged row
whose key is not stored inserts the record. One whose key is stored with another value (by an earlier
batch) is a correction and replaces it; one whose ``action`` is ``retract`` withdraws it. The record as
it was goes to ``record_history`` with the batch and client that changed it. Only the client whose batch
stored a record, or the operator, may change it: anyone else's row is rejected (``not_record_owner``),
and so is a retraction of a record that is not stored (``no_such_record``). An identical row changes
nothing and is a duplicate, whoever sends it.

A record a person declared (travel of source ``declared``, sql/011) belongs to no agency, and agencies
always win over it: any agency's row with its key takes it over (a correction, even with the same value,
so the record becomes the agency's and the declared one goes to history). Only an operator may retract a
declared record; an agency retracts only its own.

Within a batch the first row of a key wins, as before: a record stored by this batch is never corrected
by a later row of it (so chunking changes nothing). Retractions run after the inserts of their chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from app.db import Conn
from app.scopes import OPERATOR_CLIENT_ID


@dataclass(frozen=True, slots=True)
class RecordTable:
    table: str
    key: tuple[str, ...]  # after pseudonym
    value: tuple[str, ...]
    # The chunk's staged rows as (row_no, pseudonym, *key, *value, action), rejected ones left out.
    source: str
    # The table holds records people declared themselves (a `source` column), which any agency overwrites.
    declared: bool = False


@dataclass(frozen=True, slots=True)
class Changes:
    inserted: int
    corrected: int
    retracted: int
    rejected: int


_NOT_REJECTED = "NOT EXISTS (SELECT 1 FROM batch_rejections r WHERE r.batch_id = $1 AND r.row_no = s.row_no)"
_S_ROWS = "s.batch_id = $1 AND s.row_no > $2 AND s.row_no <= $3"


def _staged(kind: str, key: tuple[str, ...], value: tuple[str, ...]) -> str:
    columns = ", ".join(f"s.{c}" for c in (*key, *value))
    return f"""SELECT s.row_no, s.pseudonym, {columns}, s.action FROM staging_{kind} s
        WHERE {_S_ROWS} AND {_NOT_REJECTED}"""


# A test names its person by identity, by a registered sample, or both (when both, they must agree).
_TEST_SOURCE: Final = f"""SELECT s.row_no, coalesce(s.pseudonym, m.pseudonym) AS pseudonym, s.sampled_at, s.lab,
        s.result, s.reported_at, s.sample_id, s.action
    FROM staging_test s LEFT JOIN samples m ON m.sample_id = s.sample_id
    WHERE {_S_ROWS} AND (s.pseudonym IS NOT NULL OR m.pseudonym IS NOT NULL)
      AND (s.pseudonym IS NULL OR m.pseudonym IS NULL OR s.pseudonym = m.pseudonym) AND {_NOT_REJECTED}"""


def _table(
    kind: str, table: str, key: tuple[str, ...], value: tuple[str, ...], *, declared: bool = False
) -> RecordTable:
    return RecordTable(table, key, value, _TEST_SOURCE if kind == "test" else _staged(kind, key, value), declared)


RECORD_TABLES: Final[dict[str, RecordTable]] = {
    "vaccination": _table("vaccination", "vaccinations", ("product", "dose"), ("vaccinated_on", "site")),
    "test": _table("test", "nucleic_tests", ("sampled_at", "lab"), ("result", "reported_at", "sample_id")),
    "travel": _table("travel", "travel_arrivals", ("arrived_at", "area_code"), ("mode",), declared=True),
    "designation": _table(
        "designation", "designations", ("kind", "valid_from"), ("valid_until", "authority", "reason")
    ),
}


def _same_key(t: RecordTable, left: str, right: str) -> str:
    return " AND ".join(f"{left}.{c} = {right}.{c}" for c in ("pseudonym", *t.key))


def _differs(t: RecordTable, left: str, right: str) -> str:
    return (
        f"({', '.join(f'{left}.{c}' for c in t.value)}) IS DISTINCT FROM ({', '.join(f'{right}.{c}' for c in t.value)})"
    )


def _is_declared(t: RecordTable, alias: str) -> str:
    return f"{alias}.source = 'declared'" if t.declared else "false"


def _first_of_key(t: RecordTable, action: str) -> str:
    key = ", ".join(("pseudonym", *t.key))
    return f"SELECT DISTINCT ON ({key}) * FROM src WHERE action = '{action}' ORDER BY {key}, row_no"


def _history(kind: str, change: str, rows: str) -> str:
    return f"""INSERT INTO record_history (kind, pseudonym, change, previous, previous_batch_id, batch_id, client_id)
        SELECT '{kind}', o.pseudonym, '{change}', to_jsonb(o) - 'pseudonym' - 'batch_id', o.batch_id, $1,
               (SELECT client_id FROM batches WHERE id = $1)
        FROM {rows} o"""


def _rejections(t: RecordTable) -> str:
    # A change is a retraction, or a row whose value differs from a record another batch stored.
    return f"""WITH src AS ({t.source}), me AS (SELECT client_id FROM batches WHERE id = $1)
        INSERT INTO batch_rejections (batch_id, row_no, field, code, message)
        SELECT DISTINCT ON (s.row_no) $1, s.row_no, 'action',
               CASE WHEN t.pseudonym IS NULL THEN 'no_such_record' ELSE 'not_record_owner' END,
               CASE WHEN t.pseudonym IS NULL THEN 'there is no stored record with this key to retract'
                    ELSE 'only the agency that sent the record (or an operator) may correct or retract it'
               END
        FROM src s CROSS JOIN me
        LEFT JOIN {t.table} t ON {_same_key(t, "t", "s")}
        LEFT JOIN batches b ON b.id = t.batch_id
        WHERE (s.action = 'retract' AND t.pseudonym IS NULL)
           OR (t.pseudonym IS NOT NULL AND t.batch_id IS DISTINCT FROM $1 AND me.client_id <> {OPERATOR_CLIENT_ID}
               AND b.client_id IS DISTINCT FROM me.client_id
               AND (s.action = 'retract' OR ({_differs(t, "t", "s")} AND NOT {_is_declared(t, "t")})))
        ORDER BY s.row_no
        ON CONFLICT DO NOTHING"""


def _corrections(kind: str, t: RecordTable) -> str:
    # Statements in one WITH see one snapshot: `old` holds the records as they were before the UPDATE.
    # A declared record is taken over even when the values agree: it becomes the agency's.
    changed = (
        f"{_same_key(t, 't', 'p')} AND t.batch_id IS DISTINCT FROM $1"
        f" AND ({_differs(t, 't', 'p')} OR {_is_declared(t, 't')})"
    )
    agency = ", source = 'agency', declaration_id = NULL" if t.declared else ""
    return f"""WITH src AS ({t.source}), pick AS ({_first_of_key(t, "upsert")}),
        old AS (SELECT t.* FROM {t.table} t JOIN pick p ON {changed}),
        saved AS ({_history(kind, "corrected", "old")})
        UPDATE {t.table} t SET {", ".join(f"{c} = p.{c}" for c in t.value)}, batch_id = $1{agency}
        FROM pick p WHERE {changed}"""


def _inserts(t: RecordTable) -> str:
    columns = ", ".join(("pseudonym", *t.key, *t.value))
    # In key order (then row order, so the first row of a key is the one stored): index insertions walk
    # each index once a chunk instead of touching pages all over it.
    return f"""WITH src AS ({t.source})
        INSERT INTO {t.table} ({columns}, batch_id)
        SELECT {columns}, $1 FROM src WHERE action = 'upsert' ORDER BY pseudonym, row_no
        ON CONFLICT DO NOTHING"""


def _retractions(kind: str, t: RecordTable) -> str:
    return f"""WITH src AS ({t.source}), pick AS ({_first_of_key(t, "retract")}),
        gone AS (DELETE FROM {t.table} t USING pick p WHERE {_same_key(t, "t", "p")} RETURNING t.*)
        {_history(kind, "retracted", "gone")}"""


_STATEMENTS: Final = {
    kind: (_rejections(t), _corrections(kind, t), _inserts(t), _retractions(kind, t))
    for kind, t in RECORD_TABLES.items()
}


def _count(status: str) -> int:
    """Rows affected, from a command tag such as ``INSERT 0 42``."""
    return int(status.rsplit(" ", 1)[-1])


async def merge_records(conn: Conn, batch_id: int, kind: str, after: int, upto: int) -> Changes:
    """Merge staged rows ``after < row_no <= upto`` of a record kind, in the caller's transaction."""
    rejections, corrections, inserts, retractions = _STATEMENTS[kind]
    rejected = _count(await conn.execute(rejections, batch_id, after, upto))
    corrected = _count(await conn.execute(corrections, batch_id, after, upto))
    inserted = _count(await conn.execute(inserts, batch_id, after, upto))
    retracted = _count(await conn.execute(retractions, batch_id, after, upto))
    return Changes(inserted, corrected, retracted, rejected)
