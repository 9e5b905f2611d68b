"""Redis key layout.

Status entries live in hash buckets: the first `bucket_bits` bits of the pseudonym choose the bucket
(`hc:{s<hex>}`), the rest of the pseudonym is the field. Against one string key per subject this cuts
what a subject costs from ~245 bytes (a 40-character key, an 84-byte value, two dictionary entries and
an expiry) to ~60: a bucket of up to 128 small fields is one listpack, where a field costs its bytes
and two or three more (measured with `make bench`, see README). `bucket_bits` must give buckets of well
under 128 subjects on average (Redis's `hash-max-listpack-entries`; past it a bucket turns into a hash
table and costs more than string keys): 16 bits (65,536 buckets) serve up to about 6 million people,
19 bits a province of 32 million. Every process of a deployment must use the same value.

Each subject's keys share the bucket's hash tag, so they land in one Redis Cluster slot, on one node:
the status field and the tombstone of an unknown subject (`hc:{s<hex>}:nx:<field>`, a string key with
a TTL, so that look-ups of people who do not exist never grow the buckets). A look-up is an HGET of the
field and a GET of the tombstone, sent with the other look-ups of the same loop turn in one round trip
(on a cluster, one buffer per node). Commands stay single-key all the same (cache/status_writer.py).

The key of format 2 (`hc:{<pseudonym hex>}:st`, one string per subject) is kept for rolling upgrades
(see `StatusWriter(legacy_keys=True)`).
"""

from __future__ import annotations

from binascii import hexlify
from dataclasses import dataclass

PSEUDONYM_BYTES = 16
DEFAULT_BUCKET_BITS = 16
MAX_BUCKET_BITS = 24

# Every bucket's key matches this (and so do tombstones, which are strings).
BUCKET_PATTERN = "hc:{s*}"

# The value of a tombstone key: an unknown subject.
TOMBSTONE = b"\x00"

SCAN_STREAM = "hc:scans"


def _check(pseudonym: bytes) -> None:
    if len(pseudonym) != PSEUDONYM_BYTES:
        raise ValueError(f"pseudonym must be {PSEUDONYM_BYTES} bytes, got {len(pseudonym)}")


@dataclass(frozen=True, slots=True)
class StatusSlot:
    """Where one subject's status lives: a field of a bucket, and its tombstone key beside it."""

    bucket: bytes
    field: bytes
    tombstone: bytes


class BucketLayout:
    """Maps a pseudonym to its bucket, field and tombstone key."""

    def __init__(self, bucket_bits: int = DEFAULT_BUCKET_BITS) -> None:
        if not 1 <= bucket_bits <= MAX_BUCKET_BITS:
            raise ValueError(f"bucket_bits must be between 1 and {MAX_BUCKET_BITS}, got {bucket_bits}")
        self.bucket_bits = bucket_bits
        self._shift = 32 - bucket_bits
        self._width = (bucket_bits + 3) // 4
        # Bytes wholly inside the bucket number are not repeated in the field.
        self._skip = bucket_bits // 8

    def slot(self, pseudonym: bytes) -> StatusSlot:
        _check(pseudonym)
        bucket = b"hc:{s%0*x}" % (self._width, int.from_bytes(pseudonym[:4], "big") >> self._shift)
        field = pseudonym[self._skip :]
        return StatusSlot(bucket, field, bucket + b":nx:" + field)


def status_slot(pseudonym: bytes, bucket_bits: int = DEFAULT_BUCKET_BITS) -> StatusSlot:
    """The slot of one subject; for tests and tools (the hot path keeps a `BucketLayout`)."""
    return BucketLayout(bucket_bits).slot(pseudonym)


def status_field(pseudonym: bytes, bucket_bits: int = DEFAULT_BUCKET_BITS) -> tuple[bytes, bytes]:
    """(bucket, field) of one subject's entry: `await redis.hget(*status_field(p))` reads it."""
    where = status_slot(pseudonym, bucket_bits)
    return where.bucket, where.field


def legacy_status_key(pseudonym: bytes) -> bytes:
    """`hc:{<pseudonym hex>}:st` — format 2's string key per subject, read and written only while a
    rolling upgrade from it is in progress."""
    _check(pseudonym)
    return b"hc:{" + hexlify(pseudonym) + b"}:st"


def rate_limit_key(client_id: str, bucket: str) -> str:
    """`hc:rl:{<client>}:<bucket>` — one client's token bucket, hash-tagged by client."""
    for part in (client_id, bucket):
        if not part or any(c in part for c in "{}: \t\r\n"):
            raise ValueError(f"client id or bucket {part!r} is empty or holds a character reserved in keys")
    return f"hc:rl:{{{client_id}}}:{bucket}"


def scan_id_key(client_id: int, scan_id: str) -> str:
    """`hc:sid:{<client>}:<scan id>` — marks a scanner's scan id as seen (a queued scan sent twice)."""
    if not scan_id or any(c in scan_id for c in "{}: \t\r\n"):
        raise ValueError(f"scan id {scan_id!r} is empty or holds a character reserved in keys")
    return f"hc:sid:{{{client_id}}}:{scan_id}"


def jti_key(issuer: str, jti: str) -> str:
    """`hc:jti:{<issuer>}:<jti>` — a peer's assertion id, remembered until the assertion expires."""
    return f"hc:jti:{{{issuer}}}:{jti}"


def peer_lookup_key(pseudonym: bytes) -> bytes:
    """`hc:{<pseudonym hex>}:pv` — a person's recent peer look-up (a key of its own, read and written alone)."""
    if len(pseudonym) != PSEUDONYM_BYTES:
        raise ValueError(f"pseudonym must be {PSEUDONYM_BYTES} bytes, got {len(pseudonym)}")
    return b"hc:{" + hexlify(pseudonym) + b"}:pv"
