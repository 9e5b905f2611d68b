"""Redis side of healthcode: status entries, read-through cache, rate limits, scan-event stream."""

from cache.connection import REDIS_ERRORS, open_redis
from cache.entry import EntryFormatError, StatusEntry, UnknownVersionError, pack, unpack
from cache.rate_limit import RateLimiter
from cache.scan_stream import ScanStream
from cache.status_cache import Loader, StatusCache

__all__ = [
    "REDIS_ERRORS",
    "EntryFormatError",
    "Loader",
    "RateLimiter",
    "ScanStream",
    "StatusCache",
    "StatusEntry",
    "UnknownVersionError",
    "open_redis",
    "pack",
    "unpack",
]
