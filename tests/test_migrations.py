"""Numbered SQL migrations: applied in order, once, each in its own transaction; applied ones never edited.

Each test works in a schema of its own (search_path), so it starts from nothing without a new database.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from app.db import SQL_DIR, Migration, MigrationError, connect, load_migrations, migrate


@pytest.fixture
async def schema_conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    name = f"migrations_{secrets.token_hex(4)}"
    conn = await connect(database_url)
    await conn.execute(f"CREATE SCHEMA {name}")
    await conn.execute(f"SET search_path TO {name}")
    try:
        yield conn
    finally:
        await conn.execute(f"DROP SCHEMA {name} CASCADE")
        await conn.close()


def write(directory: Path, name: str, sql: str) -> Path:
    path = directory / name
    path.write_text(sql)
    return path


async def tables(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    return {r["tablename"] for r in rows}


async def recorded(conn: asyncpg.Connection) -> list[tuple[int, str]]:
    return [
        (r["version"], r["name"]) for r in await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY 1")
    ]


def test_migrations_load_in_numeric_order_and_skip_other_files(tmp_path: Path) -> None:
    write(tmp_path, "010_later.sql", "SELECT 10")
    write(tmp_path, "002_second.sql", "SELECT 2")
    write(tmp_path, "001_first.sql", "SELECT 1")
    write(tmp_path, "queries.sql", "-- name: not a migration")
    write(tmp_path, "3_bad_name.sql", "SELECT 3")
    loaded = load_migrations(tmp_path)
    assert [(m.version, m.name, m.sql) for m in loaded] == [
        (1, "first", "SELECT 1"),
        (2, "second", "SELECT 2"),
        (10, "later", "SELECT 10"),
    ]


def test_two_migrations_with_one_number_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "001_a.sql", "SELECT 1")
    write(tmp_path, "001_b.sql", "SELECT 1")
    with pytest.raises(MigrationError, match="two migrations share a number"):
        load_migrations(tmp_path)


def test_the_project_migrations_are_numbered_from_one_without_gaps() -> None:
    versions = [m.version for m in load_migrations(SQL_DIR)]
    assert versions == list(range(1, len(versions) + 1))
    assert len(versions) >= 2


async def test_applied_in_order_and_recorded_once(schema_conn: asyncpg.Connection, tmp_path: Path) -> None:
    write(tmp_path, "001_people.sql", "CREATE TABLE people (id int PRIMARY KEY)")
    write(tmp_path, "002_names.sql", "ALTER TABLE people ADD COLUMN name text")
    applied = await migrate(schema_conn, load_migrations(tmp_path))
    assert [(m.version, m.name) for m in applied] == [(1, "people"), (2, "names")]
    assert await recorded(schema_conn) == [(1, "people"), (2, "names")]
    assert await migrate(schema_conn, load_migrations(tmp_path)) == []
    await schema_conn.execute("INSERT INTO people (id, name) VALUES (1, 'x')")

    write(tmp_path, "003_ages.sql", "ALTER TABLE people ADD COLUMN age int")
    assert [m.version for m in await migrate(schema_conn, load_migrations(tmp_path))] == [3]
    checksums = await schema_conn.fetch("SELECT version, checksum FROM schema_migrations ORDER BY 1")
    assert [r["checksum"] for r in checksums] == [m.checksum for m in load_migrations(tmp_path)]


async def test_editing_an_applied_migration_is_refused(schema_conn: asyncpg.Connection, tmp_path: Path) -> None:
    first = write(tmp_path, "001_people.sql", "CREATE TABLE people (id int PRIMARY KEY)")
    await migrate(schema_conn, load_migrations(tmp_path))
    first.write_text("CREATE TABLE people (id bigint PRIMARY KEY)")
    write(tmp_path, "002_more.sql", "CREATE TABLE more (id int)")
    with pytest.raises(MigrationError, match="001_people changed after it was applied; add a new migration"):
        await migrate(schema_conn, load_migrations(tmp_path))
    # Nothing after the edited migration ran.
    assert await tables(schema_conn) == {"people", "schema_migrations"}
    assert await recorded(schema_conn) == [(1, "people")]


async def test_a_failing_migration_leaves_nothing_behind(schema_conn: asyncpg.Connection, tmp_path: Path) -> None:
    write(tmp_path, "001_ok.sql", "CREATE TABLE ok (id int)")
    write(tmp_path, "002_broken.sql", "CREATE TABLE half (id int); SELECT no_such_function()")
    write(tmp_path, "003_after.sql", "CREATE TABLE after (id int)")
    with pytest.raises(asyncpg.UndefinedFunctionError):
        await migrate(schema_conn, load_migrations(tmp_path))
    assert await tables(schema_conn) == {"ok", "schema_migrations"}
    assert await recorded(schema_conn) == [(1, "ok")]
    # Fixed, the rest applies.
    write(tmp_path, "002_broken.sql", "CREATE TABLE half (id int)")
    assert [m.version for m in await migrate(schema_conn, load_migrations(tmp_path))] == [2, 3]
    # The advisory lock was released after the failure, or the second run would have hung.


async def test_concurrent_runs_apply_each_migration_once(schema_conn: asyncpg.Connection, database_url: str) -> None:
    schema = await schema_conn.fetchval("SELECT current_schema()")
    # A database that has been migrated before: its bookkeeping table exists.
    assert await migrate(schema_conn, []) == []
    migrations = [Migration(1, "counter", "CREATE TABLE counter (n int); INSERT INTO counter VALUES (1)")]
    others = [await connect(database_url) for _ in range(3)]
    try:
        for conn in others:
            await conn.execute(f"SET search_path TO {schema}")
        results = await asyncio.gather(*(migrate(conn, migrations) for conn in [schema_conn, *others]))
    finally:
        for conn in others:
            await conn.close()
    assert sorted(len(r) for r in results) == [0, 0, 0, 1]
    assert await schema_conn.fetchval("SELECT count(*) FROM counter") == 1


async def test_the_project_schema_applies_to_an_empty_schema_and_twice_is_safe(
    schema_conn: asyncpg.Connection,
) -> None:
    applied = await migrate(schema_conn)
    assert [m.version for m in applied] == [m.version for m in load_migrations()]
    assert {
        "subjects",
        "vaccinations",
        "nucleic_tests",
        "travel_arrivals",
        "designations",
        "statuses",
        "risk_areas",
        "api_clients",
        "signing_keys",
        "scan_events",
        "audit_log",
        "schema_migrations",
    } <= await tables(schema_conn)
    assert await migrate(schema_conn) == []
