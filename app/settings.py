"""Configuration: environment variables into one frozen, validated object."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from cache.rate_limit import Rate


class SettingsError(ValueError):
    """A configuration variable is missing or wrong; the message names it."""


@dataclass(frozen=True, slots=True, repr=False)
class Settings:
    database_url: str
    redis_url: str
    # Secrets stay out of the repr, so a logged or printed settings object does not leak them.
    pepper: bytes = field(repr=False)
    keys_dir: Path
    # AES key sealing each token's `sub` handle (signing/handles.py): 16, 24 or 32 bytes.
    handle_key: bytes = field(repr=False)
    issuer: str = "healthcode"
    token_ttl_seconds: int = 300
    negative_ttl_seconds: int = 30
    max_in_flight: int = 2000
    # Admission control (app/http/admission.py): requests handled at once; the others queue, and a
    # queue whose oldest waiter stays older than the target for a whole interval is shed.
    admit_concurrency: int = 64
    queue_target_seconds: float = 0.005
    # Refuse simple requests from their bytes while overloaded (app/http/door.py); 0 turns it off, so
    # that every refusal goes through aiohttp and the middleware (for comparison, or behind a proxy
    # that needs aiohttp's own handling of every request).
    door: bool = True
    queue_interval_seconds: float = 0.1
    max_body_bytes: int = 64 * 1024
    max_upload_bytes: int = 4 * 1024 * 1024 * 1024
    pg_pool_min: int = 2
    pg_pool_max: int = 10
    # Uploads and rejection downloads have a pool of their own, so that slow agencies cannot take the
    # connections that cache misses and the periodic refresh need; an upload whose body stops arriving
    # for this long is ended (408) and its connection freed.
    ingest_pool_max: int = 4
    upload_idle_seconds: int = 30
    # The miss path's budget: a request waits at most this long for a pool connection, and at most
    # pg_miss_timeout_seconds in all (connection, read, recompute) before it is answered 503. Sized for
    # the hot path: a miss normally takes a few milliseconds; waiting longer only piles requests up.
    pg_acquire_timeout_seconds: float = 0.5
    pg_miss_timeout_seconds: float = 1.5
    # After Postgres fails, misses answer 503 at once for this long before one tries it again.
    pg_retry_pause_seconds: float = 1.0
    ruleset: str = "default-2022"
    # How often a process re-reads clients and keys, so a revocation takes effect everywhere.
    refresh_seconds: float = 5.0
    # Uploads an agency may start per second, across every process (a retry storm is refused early).
    agency_uploads_per_second: int = 20
    # Rejected rows past which a batch is refused as a whole (with counts by code), not stored row by row.
    max_rejections_per_batch: int = 10_000
    # Request limits per client kind and bucket that differ from app.limits.DEFAULTS.
    rate_limits: tuple[tuple[str, str, Rate], ...] = ()
    # Private signing keys given in the environment (PEM), used before key files.
    signing_key_pems: tuple[bytes, ...] = ()
    # Federation (app/federation/): the key every deployment of the federation shares for federation
    # pseudonyms (never the pepper; None: this deployment takes no part in vaccination look-ups), this
    # deployment's own region (ISO 3166, the origin of records issued here), where it is reached from
    # outside (the SMART Health Card issuer URL; empty: the request's own origin), and the peer budget.
    federation_key: bytes | None = field(default=None, repr=False)
    region_code: str = "CN-CQ"
    public_url: str = ""
    peer_timeout_seconds: float = 0.3
    peer_cache_seconds: int = 600
    peer_keys_max_stale_seconds: int = 86_400
    peer_refresh_seconds: float = 30.0
    # A streaming replica that cache misses may read (app/statuses/loader.py); writes and everything
    # that must be current use database_url. A replica read slower than the timeout goes to the primary.
    database_replica_url: str | None = None
    pg_replica_timeout_seconds: float = 0.2
    # Whether API processes process the batches they receive (the quick start); 0 leaves batches to
    # `healthcode worker` processes.
    embedded_worker: bool = True
    # Scan events and place-code visits older than this are deleted by `healthcode sweep`.
    retention_days: int = 28
    # Status entries' hash buckets in Redis: 2**bits of them, the same in every process (cache/keys.py).
    # About people / 64 buckets: 16 bits up to ~6 million people, 19 for 32 million.
    cache_bucket_bits: int = 16
    # During a rolling upgrade from the one-key-per-subject layout: write and read both (cache/status_writer.py).
    cache_legacy_keys: bool = False

    def __repr__(self) -> str:
        # Settings end up in logs and tracebacks: secrets never do. Fields marked repr=False are left
        # out; any other bytes (a secret added later) and PEM blocks show only their size; URLs lose
        # their password.
        shown = []
        for f in fields(self):
            if not f.repr:
                continue
            value = getattr(self, f.name)
            if isinstance(value, bytes):
                text = f"<{len(value)} secret bytes>"
            elif f.name == "signing_key_pems":
                text = f"<{len(value)} private keys>"
            elif f.name.endswith("_url"):
                text = repr(_without_password(value))
            else:
                text = repr(value)
            shown.append(f"{f.name}={text}")
        return f"Settings({', '.join(shown)})"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            database_url=_required(env, "DATABASE_URL"),
            redis_url=_redis_url(env),
            pepper=_pepper(env),
            keys_dir=Path(_required(env, "HEALTHCODE_KEYS_DIR")),
            handle_key=_handle_key(env),
            issuer=env.get("HEALTHCODE_ISSUER", "healthcode"),
            token_ttl_seconds=_int(env, "HEALTHCODE_TOKEN_TTL_SECONDS", 300, low=30, high=3600),
            negative_ttl_seconds=_int(env, "HEALTHCODE_NEGATIVE_TTL_SECONDS", 30, low=1, high=3600),
            max_in_flight=_int(env, "HEALTHCODE_MAX_IN_FLIGHT", 2000, low=1, high=1_000_000),
            admit_concurrency=_int(env, "HEALTHCODE_ADMIT_CONCURRENCY", 64, low=1, high=100_000),
            door=bool(_int(env, "HEALTHCODE_DOOR", 1, low=0, high=1)),
            queue_target_seconds=_ms(env, "HEALTHCODE_QUEUE_TARGET_MS", 5, low=1, high=10_000),
            queue_interval_seconds=_ms(env, "HEALTHCODE_QUEUE_INTERVAL_MS", 100, low=10, high=60_000),
            max_body_bytes=_int(env, "HEALTHCODE_MAX_BODY_BYTES", 64 * 1024, low=1024, high=1 << 30),
            max_upload_bytes=_int(env, "HEALTHCODE_MAX_UPLOAD_BYTES", 4 << 30, low=1024, high=1 << 40),
            pg_pool_min=_int(env, "HEALTHCODE_PG_POOL_MIN", 2, low=0, high=1000),
            pg_pool_max=_int(env, "HEALTHCODE_PG_POOL_MAX", 10, low=1, high=1000),
            ingest_pool_max=_int(env, "HEALTHCODE_INGEST_POOL_MAX", 4, low=1, high=1000),
            upload_idle_seconds=_int(env, "HEALTHCODE_UPLOAD_IDLE_SECONDS", 30, low=1, high=3600),
            pg_acquire_timeout_seconds=_ms(env, "HEALTHCODE_PG_ACQUIRE_TIMEOUT_MS", 500, low=10, high=60_000),
            pg_miss_timeout_seconds=_ms(env, "HEALTHCODE_PG_MISS_TIMEOUT_MS", 1500, low=10, high=60_000),
            pg_retry_pause_seconds=_ms(env, "HEALTHCODE_PG_RETRY_PAUSE_MS", 1000, low=0, high=60_000),
            ruleset=env.get("HEALTHCODE_RULESET", "default-2022"),
            refresh_seconds=float(_int(env, "HEALTHCODE_REFRESH_SECONDS", 5, low=1, high=3600)),
            agency_uploads_per_second=_int(env, "HEALTHCODE_AGENCY_UPLOADS_PER_SECOND", 20, low=1, high=100_000),
            rate_limits=_rate_limits(env, "HEALTHCODE_RATE_LIMITS"),
            signing_key_pems=_pems(env, "HEALTHCODE_SIGNING_KEYS"),
            max_rejections_per_batch=_int(
                env, "HEALTHCODE_MAX_REJECTIONS_PER_BATCH", 10_000, low=0, high=1_000_000_000
            ),
            federation_key=_federation_key(env),
            region_code=_region(env),
            public_url=_public_url(env),
            peer_timeout_seconds=_ms(env, "HEALTHCODE_PEER_TIMEOUT_MS", 300, low=10, high=10_000),
            peer_cache_seconds=_int(env, "HEALTHCODE_PEER_CACHE_SECONDS", 600, low=1, high=86_400),
            peer_keys_max_stale_seconds=_int(
                env, "HEALTHCODE_PEER_KEYS_MAX_STALE_SECONDS", 86_400, low=60, high=30 * 86_400
            ),
            peer_refresh_seconds=float(_int(env, "HEALTHCODE_PEER_REFRESH_SECONDS", 30, low=1, high=3600)),
            database_replica_url=env.get("DATABASE_REPLICA_URL", "").strip() or None,
            pg_replica_timeout_seconds=_ms(env, "HEALTHCODE_PG_REPLICA_TIMEOUT_MS", 200, low=10, high=60_000),
            embedded_worker=_flag(env, "HEALTHCODE_EMBEDDED_WORKER", True),
            retention_days=_int(env, "HEALTHCODE_RETENTION_DAYS", 28, low=1, high=3650),
            cache_bucket_bits=_int(env, "HEALTHCODE_CACHE_BUCKET_BITS", 16, low=1, high=24),
            cache_legacy_keys=bool(_int(env, "HEALTHCODE_CACHE_LEGACY_KEYS", 0, low=0, high=1)),
        )


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise SettingsError(f"{name} is not set")
    return value


def _int(env: Mapping[str, str], name: str, default: int, *, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be 1 or 0 (true or false), got {raw!r}")


def _ms(env: Mapping[str, str], name: str, default: int, *, low: int, high: int) -> float:
    """A duration given in milliseconds, as seconds."""
    return _int(env, name, default, low=low, high=high) / 1000


def _redis_url(env: Mapping[str, str]) -> str:
    """REDIS_URL; a cluster's (`redis+cluster://host:port,...`) seeds are checked here, not at first use."""
    url = _required(env, "REDIS_URL")
    if urlsplit(url).scheme.endswith("+cluster"):
        from cache.connection import cluster_seeds  # only then: it loads the Redis client

        try:
            cluster_seeds(url)
        except ValueError as exc:
            raise SettingsError(f"REDIS_URL: {exc}") from None
    return url


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urlunsplit((parts.scheme, f"{user}:***@{netloc[2]}", parts.path, parts.query, parts.fragment))


def _secret(env: Mapping[str, str], name: str) -> tuple[bytes, str]:
    """A secret from `name` (hex) or `name`_FILE (raw bytes), and the variable it came from.

    A file's bytes are the secret except for one final line ending (LF or CRLF), which `echo`, editors
    and secret stores add or not as they please: hosts given the same secret must derive the same
    pseudonyms. A secret whose own last byte is a line feed cannot be given as a file; give it in hex.
    """
    file_name = f"{name}_FILE"
    if hex_value := env.get(name, "").strip():
        try:
            return bytes.fromhex(hex_value), name
        except ValueError:
            raise SettingsError(f"{name} must be hex") from None
    if path := env.get(file_name, "").strip():
        try:
            return _without_line_ending(Path(path).read_bytes()), file_name
        except OSError as exc:
            raise SettingsError(f"{file_name} cannot be read: {exc.strerror}") from None
    raise SettingsError(f"set {name} (hex) or {file_name}")


def _pepper(env: Mapping[str, str]) -> bytes:
    """The pseudonym pepper, from HEALTHCODE_PEPPER (hex) or HEALTHCODE_PEPPER_FILE (raw bytes)."""
    pepper, source = _secret(env, "HEALTHCODE_PEPPER")
    if len(pepper) < 16:
        raise SettingsError(f"{source} must hold at least 16 bytes of secret")
    return pepper


def _handle_key(env: Mapping[str, str]) -> bytes:
    """The token handle key, from HEALTHCODE_HANDLE_KEY (hex) or HEALTHCODE_HANDLE_KEY_FILE (raw bytes)."""
    key, source = _secret(env, "HEALTHCODE_HANDLE_KEY")
    if len(key) not in (16, 24, 32):
        raise SettingsError(f"{source} must hold an AES key of 16, 24 or 32 bytes, not {len(key)}")
    return key


def _without_line_ending(raw: bytes) -> bytes:
    if raw.endswith(b"\r\n"):
        return raw[:-2]
    return raw.removesuffix(b"\n")


def _rate_limits(env: Mapping[str, str], name: str) -> tuple[tuple[str, str, Rate], ...]:
    raw = env.get(name, "").strip()
    if not raw:
        return ()
    from app.limits import LimitSpecError, parse_kind_rates  # only when set: it loads the Redis client

    try:
        return tuple((kind, bucket, rate) for (kind, bucket), rate in parse_kind_rates(raw).items())
    except LimitSpecError as exc:
        raise SettingsError(f"{name}: {exc}") from None


_PEM_BLOCK = re.compile(r"-----BEGIN [A-Z ]+-----.+?-----END [A-Z ]+-----", re.DOTALL)


def _pems(env: Mapping[str, str], name: str) -> tuple[bytes, ...]:
    """One or more PEM blocks, one after the other, in one variable."""
    raw = env.get(name, "").strip()
    blocks = tuple(block.encode() for block in _PEM_BLOCK.findall(raw))
    if raw and not blocks:
        raise SettingsError(f"{name} must hold PEM private keys")
    return blocks


_REGION = re.compile(r"^[A-Z]{2}(-[A-Z0-9]{1,3})?$")


def _federation_key(env: Mapping[str, str]) -> bytes | None:
    """The federation-wide pseudonym key (optional: without it, no vaccination look-ups between peers)."""
    if not (env.get("HEALTHCODE_FEDERATION_KEY", "").strip() or env.get("HEALTHCODE_FEDERATION_KEY_FILE", "").strip()):
        return None
    key, source = _secret(env, "HEALTHCODE_FEDERATION_KEY")
    if len(key) < 16:
        raise SettingsError(f"{source} must hold at least 16 bytes of secret")
    if key == _pepper(env):
        raise SettingsError(f"{source} must differ from the pepper: peers must never learn pseudonyms")
    return key


def _region(env: Mapping[str, str]) -> str:
    region = env.get("HEALTHCODE_REGION_CODE", "CN-CQ").strip()
    if not _REGION.match(region):
        raise SettingsError(f"HEALTHCODE_REGION_CODE must be an ISO 3166 code such as CN-CQ or SG, got {region!r}")
    return region


def _public_url(env: Mapping[str, str]) -> str:
    public_url = env.get("HEALTHCODE_PUBLIC_URL", "").strip().rstrip("/")
    if public_url and urlsplit(public_url).scheme not in ("http", "https"):
        raise SettingsError(f"HEALTHCODE_PUBLIC_URL must be an http(s) URL, got {public_url!r}")
    return public_url
