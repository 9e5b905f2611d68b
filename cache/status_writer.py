"""The only code that writes status keys: every write is version-guarded, so Redis never goes back.

A status entry replaces the one in Redis only if it is not older: a Lua script compares the
(version, computed_at) pair that `cache.entry` packs at a fixed offset, atomically with the write. An
entry from a newer format is never replaced (a newer release wrote it); an older format, a tombstone
or unreadable bytes always are. An entry whose `valid_until` has passed deletes the key instead,
under the same guard, so an older entry cannot outlive it.

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
from cache.keys import TOMBSTONE, status_key

# KEYS[1]: a status key. ARGV[1]: a packed entry. ARGV[2]: when it expires, epoch ms; "0" when it
# already has, and the key is deleted rather than set. Returns 1 if written, 0 if refused.
GUARDED_WRITE = f"""
local current = redis.call('GET', KEYS[1])
if current and #current >= {ORDER_OFFSET + 16} then
  local format = string.byte(current, 1)
  if format > {FORMAT_VERSION} then return 0 end
  if format == {FORMAT_VERSION} then
    local version, computed_at = struct.unpack('<i8i8', current, {ORDER_OFFSET + 1})
    local new_version, new_computed_at = struct.unpack('<i8i8', ARGV[1], {ORDER_OFFSET + 1})
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
_SHA = hashlib.sha1(GUARDED_WRITE.encode()).hexdigest().encode()

# Entries per round trip. A whole chunk's round trip, not one reply, has the timeout: ten thousand
# guarded writes take ~40 ms on a quiet server.
CHUNK = 10_000
_TIMEOUT = 10.0

# (key, packed entry, expire at in epoch ms; 0 to delete)
_Write = tuple[bytes, bytes, int]


class StatusWriter:
    """Version-guarded writes of status entries and tombstones. Redis errors are raised to the caller."""

    def __init__(self, redis: Redis | RedisCluster, clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self._clock = clock
        self.refused = 0  # writes refused because Redis held a newer entry; for tests and metrics

    async def put_many(self, entries: Mapping[bytes, StatusEntry]) -> int:
        """Write each entry unless Redis holds a newer one; returns how many were stored (not refused,
        not expired)."""
        now_ms = int(self._clock() * 1000)
        writes: list[_Write] = []
        for pseudonym, entry in entries.items():
            expire_ms = entry.valid_until * 1000
            writes.append((status_key(pseudonym), pack(entry), expire_ms if expire_ms > now_ms else 0))
        stored = 0
        for start in range(0, len(writes), CHUNK):
            part = writes[start : start + CHUNK]
            replies = await self._write(part)
            for (_, _, expire_ms), reply in zip(part, replies, strict=True):
                if reply == 1:
                    stored += expire_ms != 0
                else:
                    self.refused += 1
        return stored

    async def put(self, pseudonym: bytes, entry: StatusEntry) -> bool:
        """One guarded write (a cache fill after a miss); True if stored."""
        return await self.put_many({pseudonym: entry}) == 1

    async def put_tombstone(self, pseudonym: bytes, ttl_ms: int) -> None:
        """Mark an unknown subject, unless the key holds anything (a status written meanwhile wins)."""
        await self._redis.set(status_key(pseudonym), TOMBSTONE, px=ttl_ms, nx=True)

    async def _write(self, writes: Sequence[_Write]) -> list[int]:
        replies = await self._send(writes)
        if any(_is_noscript(r) for r in replies):
            # The server does not know the script (first use, a restart, SCRIPT FLUSH, a replica promoted
            # or a slot moved to a node that never ran it): load it (on every primary of a cluster) and
            # send again. Guarded writes are idempotent, so the ones that did run may run twice.
            await self._redis.script_load(GUARDED_WRITE)
            replies = await self._send(writes)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply if isinstance(reply, ResponseError) else ResponseError(str(reply))
        return [int(r) for r in replies]

    async def _send(self, writes: Sequence[_Write]) -> list[Any]:
        if isinstance(self._redis, Redis):
            return await round_trip(self._redis, b"".join(_pack(writes)), len(writes), _TIMEOUT)
        commands = list(zip((key for key, _, _ in writes), _pack(writes), strict=True))
        return await cluster_round_trip(self._redis, commands, _TIMEOUT)


def _pack(writes: Sequence[_Write]) -> list[bytes]:
    """RESP for `EVALSHA sha 1 key value ms`, one per write."""
    head = b"*6\r\n$7\r\nEVALSHA\r\n$40\r\n" + _SHA + b"\r\n$1\r\n1\r\n"
    out: list[bytes] = []
    append = out.append
    for key, value, expire_ms in writes:
        ms = b"%d" % expire_ms
        append(head + b"$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(key), key, len(value), value, len(ms), ms))
    return out


def _is_noscript(reply: object) -> bool:
    return isinstance(reply, NoScriptError) or (isinstance(reply, Exception) and str(reply).startswith("NOSCRIPT"))
