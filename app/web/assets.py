"""The pages' static files, read once at start-up, compressed once, served from memory with validators."""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final

STATIC: Final = Path(__file__).resolve().parent / "static"
TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Below this size a gzip member's header outweighs what it saves.
_MIN_COMPRESS: Final = 512


@dataclass(frozen=True, slots=True)
class Asset:
    name: str
    content_type: str
    body: bytes
    gzipped: bytes | None  # None when compressing does not pay
    etag: str


def _asset(path: Path) -> Asset:
    body = path.read_bytes()
    packed = gzip.compress(body, 9, mtime=0) if len(body) >= _MIN_COMPRESS else None
    if packed is not None and len(packed) >= len(body):
        packed = None
    etag = '"' + hashlib.sha256(body).hexdigest()[:24] + '"'
    return Asset(path.name, TYPES[path.suffix], body, packed, etag)


@cache
def assets() -> dict[str, Asset]:
    """Every file of static/ by name; names are flat (no folders), so a request path cannot climb out."""
    return {path.name: _asset(path) for path in sorted(STATIC.iterdir()) if path.suffix in TYPES}
