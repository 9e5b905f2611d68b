"""Redis key layout.

Every key of one subject carries the subject's pseudonym as a hash tag (`{...}`), so all of them land in
one Redis Cluster slot and any multi-key operation on a subject stays legal in a cluster. A status
look-up, hit or negative hit, is one GET on one key: the negative cache is the status key itself
holding `TOMBSTONE`.
"""

from __future__ import annotations

from binascii import hexlify

PSEUDONYM_BYTES = 16

# One byte that no packed entry can equal: packed entries start with their format version (>= 1) and
# are dozens of bytes long.
TOMBSTONE = b"\x00"

SCAN_STREAM = "hc:scans"


def status_key(pseudonym: bytes) -> bytes:
    """`hc:{<pseudonym hex>}:st` — the subject's status entry or tombstone."""
    if len(pseudonym) != PSEUDONYM_BYTES:
        raise ValueError(f"pseudonym must be {PSEUDONYM_BYTES} bytes, got {len(pseudonym)}")
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
    """`hc:{<pseudonym hex>}:pv` — a person's recent peer look-up, beside their status key (same slot)."""
    if len(pseudonym) != PSEUDONYM_BYTES:
        raise ValueError(f"pseudonym must be {PSEUDONYM_BYTES} bytes, got {len(pseudonym)}")
    return b"hc:{" + hexlify(pseudonym) + b"}:pv"
