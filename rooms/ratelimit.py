"""Fixed-window rate limits shared by every process (Redis), with a local fallback.

A limit is ``(count, seconds)`` from settings; ``None`` disables it.

When Redis fails, a limit is neither open nor a wall: ``rate_hit`` never waits
on Redis longer than REDIS_HANDLER_TIMEOUT, and while Redis is away (or this
process's layer watch says so) it counts in this process instead, so a user
gets at most the limit per process. Callers that must not run unmetered (a
model request costs money) pass ``strict=True`` and get ``RateLimiterUnavailable``
instead.

A Redis that restarts empty forgets the counters of the current window. Each
process remembers the counts it saw, and when Redis answers with less than
that it puts the difference back, so a restart in mid-window lets no one
through more than twice.
"""

from __future__ import annotations

import asyncio
import logging
import time

from django.conf import settings

from .kv import kv_client

logger = logging.getLogger(__name__)


class RateLimiterUnavailable(Exception):
    """Redis did not answer and the caller asked for a strict limit."""


# Per-process counts: the fallback while Redis is away, and what this process
# last saw in Redis (to restore a counter Redis lost). key -> count.
_local: dict[str, int] = {}
_seen: dict[str, int] = {}
_window_of_prune = 0


def _prune(now_window_start: float) -> None:
    """Drop counters of finished windows (keys end with their window's end time)."""
    global _window_of_prune
    if now_window_start - _window_of_prune < 60:
        return
    _window_of_prune = now_window_start
    for table in (_local, _seen):
        for key in [k for k in table if float(k.rsplit(":", 1)[1]) < now_window_start]:
            del table[key]


def _local_hit(key: str, count: int) -> bool:
    used = max(_local.get(key, 0), _seen.get(key, 0)) + 1
    _local[key] = used
    return used <= count


def _layer_down() -> bool:
    # Imported late: realtime imports this module's neighbours at start-up.
    from .realtime import layer_health

    return not layer_health.healthy


async def rate_hit(bucket: str, limit: tuple[int, int] | None, *, strict: bool = False) -> bool:
    """Count one action; True if it is allowed."""
    if limit is None:
        return True
    count, seconds = limit
    now = time.time()
    window = int(now // seconds)
    window_end = (window + 1) * seconds
    key = f"chat:rate:{bucket}:{window_end}"
    _prune(now)
    client = kv_client()
    if client is None:
        return _local_hit(key, count)
    if _layer_down():
        if strict:
            raise RateLimiterUnavailable
        return _local_hit(key, count)
    try:
        used = await asyncio.wait_for(_incr(client, key, seconds), settings.REDIS_HANDLER_TIMEOUT)
    except Exception as exc:
        logger.warning("rate limiter unavailable (%s) for %s", type(exc).__name__, bucket.split(":", 1)[0])
        if strict:
            raise RateLimiterUnavailable from exc
        return _local_hit(key, count)
    return used <= count


async def _incr(client, key: str, seconds: int) -> int:  # type: ignore[no-untyped-def]
    async with client.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        pipe.expire(key, seconds + 1)
        used, _ = await pipe.execute()
    used = int(used)
    known = max(_seen.get(key, 0), _local.get(key, 0))
    if used <= known:
        # Redis forgot this window (it restarted empty) or never saw the counts
        # made here while it was away: put the difference back.
        used = int(await client.incrby(key, known - used + 1))
    _seen[key] = used
    return used


async def rate_peek(bucket: str, limit: tuple[int, int] | None) -> int:
    """Seconds until ``bucket`` may act again (0: it may now), without counting."""
    if limit is None:
        return 0
    count, seconds = limit
    now = time.time()
    window_end = (int(now // seconds) + 1) * seconds
    key = f"chat:rate:{bucket}:{window_end}"
    used = max(_local.get(key, 0), _seen.get(key, 0))
    client = kv_client()
    if client is not None and not _layer_down():
        try:
            value = await asyncio.wait_for(client.get(key), settings.REDIS_HANDLER_TIMEOUT)
            used = max(used, int(value or 0))
        except Exception as exc:  # noqa: BLE001
            logger.warning("rate limiter unavailable (%s)", type(exc).__name__)
    return max(1, int(window_end - now) + 1) if used >= count else 0
