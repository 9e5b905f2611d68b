"""The only code that writes status keys: every write is version-guarded, so Redis never goes back.

A status entry replaces the one in its bucket (cache/keys.py) only if it is not older: a Lua script
compares the (version, computed_at) pair that `cache.entry` packs at a fixed offset, atomically with
the write. An entry from a newer format is never replaced (a newer release wrote it); an older format
or unreadable bytes always are. An entry whose `valid_until` has passed deletes the field instead,
under the same guard, so an older entry cannot outlive it. A written (or deleted) status removes the
subject's tombstone.

Every command touches one key: the guard's script its bucket, a DEL the tombstone beside it (same hash
tag, same slot). On a Redis Cluster a script over two keys cannot run while their slot is being
migrated and one of them has moved and the other has not (the node answers TRYAGAIN until the slot is
done), so writes to that slot would stop for the whole migration; single-key commands are redirected
(ASK) and go on. The tombstone's DEL follows its subject's write in the same buffer, on the same
connection, so it runs after it.

Fields carry no expiry of their own: the reader treats an entry past its `valid_until` as a miss, the
sweeper recomputes it, and a bucket's key expires with the latest `valid_until` written into it, so a
bucket nobody writes for a day is gone. (Per-field expiry exists in Valkey 9 and Redis 7.4, but a field
with a TTL moves Valkey's bucket out of its listpack: measured 100 bytes a subject instead of ~60.)

`legacy_keys=True` is for a rolling upgrade from format 2: every write also goes, through format 2's
own guard, to the string key the previous release reads, and `StatusCache` reads both places and
takes the newer. Turn it off once no process of the previous release runs.

Bulk writes go as hand-packed EVALSHA commands in one buffer (cache/bulk.py); on a cluster, in one
buffer per node, the nodes at once, redirects followed (cache/cluster.py).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, ResponseError

from cache.bulk import round_trip
from cache.cluster import cluster_round_trip
from cache.entry import FORMAT_VERSION, ORDER_OFFSET, StatusEntry, pack
from cache.entry_v2 import FORMAT_V2, ORDER_OFFSET_V2, pack_v2
from cache.keys import TOMBSTONE, BucketLayout, legacy_status_key

# KEYS[1]: a bucket. ARGV[1]: the subject's field. ARGV[2]: a packed entry. ARGV[3]: when it expires,
# epoch ms; "0" when it already has, and the field is deleted rather than set. Returns 1 if written, 0 if
# refused.
GUARDED_WRITE = f"""
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current and #current >= {ORDER_OFFSET + 8} then
  local format = string.byte(current, 1)
  if format > {FORMAT_VERSION} then return 0 end
  if format == {FORMAT_VERSION} then
    local version, computed_at = struct.unpack('<I4I4', current, {ORDER_OFFSET + 1})
    local new_version, new_computed_at = struct.unpack('<I4I4', ARGV[2], {ORDER_OFFSET + 1})
    if version > new_version or (version == new_version and computed_at > new_computed_at) then
      return 0
    end
  end
end
if ARGV[3] == '0' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  local at = tonumber(ARGV[3])
  if redis.call('PEXPIRETIME', KEYS[1]) < at then redis.call('PEXPIREAT', KEYS[1], at) end
end
return 1
"""
_SHA = hashlib.sha1(GUARDED_WRITE.encode()).hexdigest().encode()

# Format 2's guard on format 2's string key, for rolling upgrades (see the module's docstring).
# KEYS[1]: the legacy key. ARGV[1]: a format 2 entry. ARGV[2]: expiry in epoch ms, "0" to delete.
LEGACY_GUARDED_WRITE = f"""
local current = redis.call('GET', KEYS[1])
if current and #current >= {ORDER_OFFSET_V2 + 16} then
  local format = string.byte(current, 1)
  if format > {FORMAT_V2} then return 0 end
  if format == {FORMAT_V2} then
    local version, computed_at = struct.unpack('<i8i8', current, {ORDER_OFFSET_V2 + 1})
    local new_version, new_computed_at = struct.unpack('<i8i8', ARGV[1], {ORDER_OFFSET_V2 + 1})
    if version > new_version or (version == new_version and computed_at > new_computed_at) then
      return 0
    end
  end
end
if ARGV[2] == '0' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2])
end
return 1
"""
_LEGACY_SHA = hashlib.sha1(LEGACY_GUARDED_WRITE.encode()).hexdigest().encode()
_SCRIPTS = {_SHA: GUARDED_WRITE, _LEGACY_SHA: LEGACY_GUARDED_WRITE}

# Entries per round trip. A whole chunk's round trip, not one reply, has the timeout: ten thousand
# guarded writes take ~40 ms on a quiet server.
CHUNK = 10_000
_TIMEOUT = 10.0

# An EVALSHA (script sha, keys, arguments), or a DEL of one key (`_DEL`, (key,), ()).
_Call = tuple[bytes, tuple[bytes, ...], tuple[bytes, ...]]
_DEL = b"DEL"


class StatusWriter:
    """Version-guarded writes of status entries and tombstones. Redis errors are raised to the caller."""

    def __init__(
        self,
        redis: Redis | RedisCluster,
        clock: Callable[[], float] = time.time,
        *,
        layout: BucketLayout | None = None,
        legacy_keys: bool = False,
    ) -> None:
        self._redis = redis
        self._clock = clock
        self.layout = layout or BucketLayout()
        self.legacy_keys = legacy_keys
        self.refused = 0  # writes refused because Redis held a newer entry; for tests and metrics

    async def put_many(self, entries: Mapping[bytes, StatusEntry]) -> int:
        """Write each entry unless Redis holds a newer one; returns how many were stored (not refused,
        not expired)."""
        now_ms = int(self._clock() * 1000)
        calls: list[_Call] = []
        live: list[bool] = []
        slot = self.layout.slot
        for pseudonym, entry in entries.items():
            expire_ms = entry.valid_until * 1000
            at = b"%d" % expire_ms if expire_ms > now_ms else b"0"
            where = slot(pseudonym)
            calls.append((_SHA, (where.bucket,), (where.field, pack(entry), at)))
            calls.append((_DEL, (where.tombstone,), ()))
            live.append(at != b"0")
            if self.legacy_keys:
                calls.append((_LEGACY_SHA, (legacy_status_key(pseudonym),), (pack_v2(entry), at)))
        step = 3 if self.legacy_keys else 2
        stored = 0
        # A chunk never splits a subject's calls.
        chunk = CHUNK * step
        for start in range(0, len(calls), chunk):
            replies = await self._write(calls[start : start + chunk])
            # The bucket's reply decides; the legacy key's follows the same guard on the same data, and
            # the tombstone's DEL answers how many keys it deleted.
            for n, reply in enumerate(replies[::step], start=start // step):
                if reply == 1:
                    stored += live[n]
                else:
                    self.refused += 1
        return stored

    async def put(self, pseudonym: bytes, entry: StatusEntry) -> bool:
        """One guarded write (a cache fill after a miss); True if stored."""
        return await self.put_many({pseudonym: entry}) == 1

    async def put_tombstone(self, pseudonym: bytes, ttl_ms: int) -> None:
        """Mark an unknown subject, unless it has a status (a status written meanwhile wins).

        Two single-key commands, not one script over both keys (see the module's docstring). A status
        written between the two is still what a look-up answers (`StatusCache` reads a field before a
        tombstone), and the subject's next write deletes the tombstone."""
        where = self.layout.slot(pseudonym)
        if not await self._redis.hexists(where.bucket, where.field):
            await self._redis.set(where.tombstone, TOMBSTONE, px=ttl_ms, nx=True)

    async def _write(self, calls: Sequence[_Call]) -> list[int]:
        replies = await self._send(calls)
        if any(_is_noscript(r) for r in replies):
            # The server does not know a script (first use, a restart, SCRIPT FLUSH, a replica promoted
            # or a slot moved to a node that never ran it): load them (on every primary of a cluster) and
            # send again. Guarded writes are idempotent, so the ones that did run may run twice.
            for script in _SCRIPTS.values():
                await self._redis.script_load(script)
            replies = await self._send(calls)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply if isinstance(reply, ResponseError) else ResponseError(str(reply))
        return [int(r) for r in replies]

    async def _send(self, calls: Sequence[_Call]) -> list[Any]:
        if isinstance(self._redis, Redis):
            return await round_trip(self._redis, b"".join(_pack(calls)), len(calls), _TIMEOUT)
        # Each call has one key, which routes it.
        commands = [(keys[0], packed) for (_, keys, _), packed in zip(calls, _pack(calls), strict=True)]
        return await cluster_round_trip(self._redis, commands, _TIMEOUT)


def _pack(calls: Sequence[_Call]) -> list[bytes]:
    """RESP for `EVALSHA sha nkeys key… arg…` or `DEL key`, one per call."""
    out: list[bytes] = []
    append = out.append
    for sha, keys, args in calls:
        if sha == _DEL:
            append(b"*2\r\n$3\r\nDEL\r\n$%d\r\n%b\r\n" % (len(keys[0]), keys[0]))
            continue
        parts = (*keys, *args)
        template = _templates.get((sha, len(keys), len(parts)))
        if template is None:
            template = _templates[(sha, len(keys), len(parts))] = (
                b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n" % (len(parts) + 3) + sha + b"\r\n$1\r\n%d\r\n" % len(keys)
            ).replace(b"%", b"%%") + b"$%d\r\n%b\r\n" * len(parts)
        append(template % tuple(x for p in parts for x in (len(p), p)))
    return out


_templates: dict[tuple[bytes, int, int], bytes] = {}


def _is_noscript(reply: object) -> bool:
    return isinstance(reply, NoScriptError) or (isinstance(reply, Exception) and str(reply).startswith("NOSCRIPT"))
