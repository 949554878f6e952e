"""Getting room events to sockets: group names, best-effort broadcast, and the
per-process watch on the channel layer.

The channel layer delivers at most once and drops silently, so nothing here is
trusted for completeness: every event is in the database first and carries a
``seq``; clients detect holes and resume from their cursor. What this module
does guarantee is that a Redis outage turns into a closed socket (code 4503,
"reconnect and resume") rather than a socket that silently hears nothing.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from channels.layers import get_channel_layer
from django.conf import settings

from .kv import kv_client

logger = logging.getLogger(__name__)

BROADCAST_TIMEOUT = 3.0


def room_group(room_id: int) -> str:
    return f"room.{room_id}"


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


async def group_send_safe(group: str, message: dict[str, Any]) -> bool:
    """Send to a group; on a layer failure log it and return False.

    The event is already committed, so a failed broadcast only delays it:
    clients catch up through seq holes, resumes, or the 4503 close below.
    """
    layer = get_channel_layer()
    try:
        await asyncio.wait_for(layer.group_send(group, message), BROADCAST_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - any layer failure has the same answer
        logger.warning("broadcast to %s failed: %s", group, type(exc).__name__)
        layer_health.report_failure()
        return False
    return True


class Closable(Protocol):
    async def close_for_outage(self) -> None: ...


class LayerHealth:
    """Watches Redis from this process and closes local sockets when it fails.

    While Redis is down or stalled, pub/sub silently loses events; closing the
    sockets makes every client reconnect (with backoff) and resume from the
    database once Redis answers again.
    """

    def __init__(self) -> None:
        self._sockets: weakref.WeakSet[Any] = weakref.WeakSet()
        self._task: asyncio.Task[None] | None = None
        self._failed = False

    def register(self, consumer: Closable) -> None:
        self._sockets.add(consumer)
        self._ensure_task()

    def unregister(self, consumer: Closable) -> None:
        self._sockets.discard(consumer)

    def report_failure(self) -> None:
        if not self._failed:
            self._failed = True
            asyncio.get_running_loop().create_task(self._close_all())
        # The watch is what clears the failure once Redis answers again.
        self._ensure_task()

    @property
    def healthy(self) -> bool:
        return not self._failed

    def _ensure_task(self) -> None:
        if not settings.REDIS_URL:
            return
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="layer-health")

    async def _watch(self) -> None:
        client = kv_client()
        assert client is not None
        while True:
            await asyncio.sleep(settings.LAYER_HEALTH_INTERVAL)
            try:
                await asyncio.wait_for(client.ping(), settings.REDIS_SOCKET_TIMEOUT)
            except Exception as exc:  # noqa: BLE001
                if not self._failed:
                    logger.warning("channel layer unreachable (%s): closing local sockets", type(exc).__name__)
                self._failed = True
                await self._close_all()
                continue
            if self._failed:
                logger.warning("channel layer reachable again")
                self._failed = False

    async def _close_all(self) -> None:
        sockets = list(self._sockets)
        self._sockets = weakref.WeakSet()
        for consumer in sockets:
            try:
                await consumer.close_for_outage()
            except Exception:
                logger.debug("close during outage failed", exc_info=True)


layer_health = LayerHealth()


def task_spawn(coro: Awaitable[None], name: str, on_done: Callable[[], None] | None = None) -> asyncio.Task[None]:
    """Run background work the process keeps a reference to (an unreferenced
    task may be garbage-collected mid-flight) and whose failures get logged."""
    task = asyncio.ensure_future(coro)
    task.set_name(name)
    _tasks.add(task)

    def _done(t: asyncio.Task[None]) -> None:
        _tasks.discard(t)
        if on_done is not None:
            on_done()
        if not t.cancelled() and t.exception() is not None:
            logger.error("background task %s failed", name, exc_info=t.exception())

    task.add_done_callback(_done)
    return task


_tasks: set[asyncio.Task[None]] = set()
