"""One status-write path: nothing but app.statuses.publish writes statuses, in Postgres or in Redis.

Read off the source, so that a new writer that bypasses the version guards fails here before it can
roll a status back in production.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("app", "cache", "signing", "loadtests")

# SQL that changes the statuses table (a migration creating or altering it is not code that runs).
STATUSES_WRITE = re.compile(r"\b(INSERT\s+INTO|UPDATE|DELETE\s+FROM|TRUNCATE|COPY)\s+statuses\b", re.IGNORECASE)
# Writes of status keys: only the guarded writer's methods write them.
REDIS_STATUS_WRITE = re.compile(r"\.(put_many|put|put_tombstone)\(")
# The status key's layout, spelled out anywhere but where it is defined.
KEY_PREFIX = re.compile(r"""["']hc:\{""")


def sources() -> dict[str, str]:
    return {
        str(path.relative_to(ROOT)): path.read_text()
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def where(pattern: re.Pattern[str]) -> set[str]:
    return {name for name, text in sources().items() if pattern.search(text)}


def test_only_the_write_path_writes_the_statuses_table() -> None:
    assert where(STATUSES_WRITE) == {"app/statuses/publish.py"}


def test_only_the_write_path_and_the_cache_fill_write_status_keys() -> None:
    # publish.py for every computed status; status_cache.py for a miss's fill, through the same guard;
    # status_writer.py's one-entry `put` is its own bulk write; the cluster benchmark times the guarded
    # writer itself, on servers of its own that it starts and stops, and the memory benchmark writes
    # synthetic entries through the same guarded writer, into a scratch server it started and stops itself.
    assert where(REDIS_STATUS_WRITE) == {
        "app/statuses/publish.py",
        "cache/status_cache.py",
        "cache/status_writer.py",
        "loadtests/bench/cluster.py",
        "loadtests/bench/memory.py",
    }


def test_the_status_key_layout_has_one_home() -> None:
    assert where(KEY_PREFIX) == {"cache/keys.py"}


def test_the_guards_are_where_the_write_path_says() -> None:
    text = sources()
    assert (
        "WHERE (statuses.version, statuses.computed_at) <= (excluded.version, excluded.computed_at)"
        in text["app/statuses/publish.py"]
    )
    assert "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])" in text["cache/status_writer.py"]
    # Format 2's guarded write, kept for rolling upgrades.
    assert "redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2])" in text["cache/status_writer.py"]
    # No plain SET or HSET of a status key anywhere else: the bulk protocol packs EVALSHA, never those.
    assert not [name for name, body in text.items() if "$3\\r\\nSET\\r\\n" in body or "$4\\r\\nHSET\\r\\n" in body]
