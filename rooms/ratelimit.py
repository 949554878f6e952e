"""Fixed-window rate limits shared by every process (Redis) or per process.

A limit is ``(count, seconds)`` from settings; ``None`` disables it.
"""

from __future__ import annotations

import logging
import time

from .kv import kv_client

logger = logging.getLogger(__name__)

_local: dict[str, tuple[int, int]] = {}


async def rate_hit(bucket: str, limit: tuple[int, int] | None) -> bool:
    """Count one action; True if it is allowed."""
    if limit is None:
        return True
    count, seconds = limit
    window = int(time.time() // seconds)
    key = f"chat:rate:{bucket}:{window}"
    client = kv_client()
    if client is None:
        old_window, used = _local.get(bucket, (window, 0))
        used = used + 1 if old_window == window else 1
        _local[bucket] = (window, used)
        return used <= count
    try:
        async with client.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, seconds + 1)
            used, _ = await pipe.execute()
    except Exception as exc:  # noqa: BLE001 - a limiter outage must not stop the chat
        logger.warning("rate limiter unavailable (%s); allowing %s", type(exc).__name__, bucket)
        return True
    return int(used) <= count
