"""The process's own Redis connection, for presence and rate limits.

Separate from the channel layer's connections so a slow PUBLISH never queues
behind a presence update. ``None`` when no REDIS_URL is configured: callers
then fall back to process-local state (single-process mode).
"""

from __future__ import annotations

import asyncio

from django.conf import settings
from redis import asyncio as aioredis

_clients: dict[tuple[asyncio.AbstractEventLoop, str], aioredis.Redis] = {}


def kv_client(purpose: str = "default") -> aioredis.Redis | None:
    """The process's client for ``purpose`` (one connection pool each: redis-py's
    pool serialises reconnects, and during a Redis stall every call of one
    purpose would otherwise queue behind a timing-out reconnect of another's)."""
    if not settings.REDIS_URL:
        return None
    loop = asyncio.get_running_loop()
    client = _clients.get((loop, purpose))
    if client is None:
        client = aioredis.Redis.from_url(
            settings.REDIS_URL,
            socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
            socket_connect_timeout=settings.REDIS_SOCKET_TIMEOUT,
            health_check_interval=0,
            decode_responses=True,
        )
        _clients[(loop, purpose)] = client
    return client
