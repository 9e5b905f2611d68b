"""Bulk status writes (cache/bulk.py) against real Redis."""

from __future__ import annotations

import time

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from cache.bulk import pack_commands, write_many


def test_pack_commands_is_resp() -> None:
    packed = pack_commands([(b"k1", b"v\r\n1", 1700000000123), (b"k2", None, 0)])

    assert packed == (
        b"*5\r\n$3\r\nSET\r\n$2\r\nk1\r\n$4\r\nv\r\n1\r\n$4\r\nPXAT\r\n$13\r\n1700000000123\r\n"
        b"*2\r\n$3\r\nDEL\r\n$2\r\nk2\r\n"
    )


async def test_write_many_sets_with_expiry_and_deletes(redis: Redis) -> None:
    await redis.set(b"gone", b"x")
    expire_ms = int(time.time() * 1000) + 60_000
    commands = [(b"k%d" % n, b"\x00\xff" * n, expire_ms + n) for n in range(2500)]

    await write_many(redis, [*commands, (b"gone", None, 0)])

    assert await redis.dbsize() == 2500
    assert await redis.get(b"k7") == b"\x00\xff" * 7
    assert await redis.pexpiretime("k2499") == expire_ms + 2499
    assert await redis.exists(b"gone") == 0


async def test_write_many_reads_every_reply_before_raising(redis: Redis) -> None:
    expire_ms = int(time.time() * 1000) + 60_000

    with pytest.raises(ResponseError, match="expire"):
        await write_many(redis, [(b"a", b"1", expire_ms), (b"bad", b"2", 0), (b"c", b"3", expire_ms)])

    # The commands around the refused one were applied, and the pooled connection still answers in step.
    assert await redis.mget([b"a", b"bad", b"c"]) == [b"1", None, b"3"]
    await write_many(redis, [(b"d", b"4", expire_ms)])
    assert await redis.get(b"d") == b"4"


async def test_write_many_of_nothing_sends_nothing(redis: Redis) -> None:
    await write_many(redis, [])

    assert await redis.dbsize() == 0
