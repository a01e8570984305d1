"""Opening Redis: one place for the client every process uses."""

from __future__ import annotations

import redis.asyncio as aioredis

from crmsync.errors import UserError


async def open_redis(url: str) -> aioredis.Redis:
    """A client for ``url`` that answered a PING, or one clear error."""
    client = aioredis.from_url(url, health_check_interval=10)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        raise UserError(
            f"cannot reach Redis at {url} ({exc}); set CRMSYNC_REDIS_URL or run `make setup`"
        ) from exc
    return client
