"""Per-client limits at the edge: each authorised request takes a token from its client's bucket."""

from __future__ import annotations

from aiohttp import web

from app.clients import Client
from app.http.appkeys import LIMITS, RATE_LIMITER
from app.http.problems import RateLimited
from cache.rate_limit import Admission, Refused


def charge(request: web.Request, client: Client, bucket: str) -> Admission:
    """Take a token and go on; the answer comes with the next Redis round trip of this loop turn (the
    status cache carries it with its read: StatusCache.get(..., admission=...))."""
    rate = request.app[LIMITS].rate(client.kind, bucket, client.limits)
    return request.app[RATE_LIMITER].take(str(client.id), bucket, rate)


async def admit(request: web.Request, client: Client, bucket: str) -> None:
    """Take a token, or refuse the request with 429 and Retry-After."""
    refused = await charge(request, client, bucket)
    if refused is not None:
        raise rate_limited(client, refused)


def rate_limited(client: Client, refused: Refused) -> RateLimited:
    rate = refused.rate
    allowance = "none" if rate.blocked else f"{rate.per_second:g} a second, bursts of {rate.burst}"
    return RateLimited(
        f"client {client.name} has used its {refused.bucket} limit ({allowance}); retry after {refused.retry_after} s",
        retry_after=refused.retry_after,
        bucket=refused.bucket,
    )
