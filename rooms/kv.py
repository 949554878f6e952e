"""The process's own Redis connection, for presence and rate limits.

Separate from the channel layer's connections so a slow PUBLISH never queues
behind a presence update. ``None`` when no REDIS_URL is configured: callers
then fall back to process-local state (single-process mode).
"""

from __future__ import annotations

import asyncio
from typing import Any

from django.conf import settings
from redis import asyncio as aioredis

_clients: dict[asyncio.AbstractEventLoop, aioredis.Redis] = {}


def redis_options(timeout: float) -> dict[str, Any]:
    """How this project's own Redis clients connect (this one, and the health
    probe's blocking one in rooms.realtime): every wait bounded by ``timeout``,
    no health-check pings of redis-py's own, strings back."""
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": 0,
        "decode_responses": True,
    }


def kv_client() -> aioredis.Redis | None:
    """The process's client (one per event loop)."""
    if not settings.REDIS_URL:
        return None
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = _clients[loop] = aioredis.Redis.from_url(
            settings.REDIS_URL, **redis_options(settings.REDIS_SOCKET_TIMEOUT)
        )
    return client
