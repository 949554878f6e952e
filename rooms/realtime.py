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
from collections.abc import Awaitable
from typing import Any, Protocol

from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import TimeoutError as RedisTimeoutError

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
    # The hub of each process routes by this name to its local sockets.
    message["group"] = group
    try:
        await asyncio.wait_for(layer.group_send(group, message), BROADCAST_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - any layer failure has the same answer
        logger.warning("broadcast to %s failed: %s", group, type(exc).__name__)
        layer_health.report_failure(exc)
        return False
    return True


class Publisher:
    """One ordered queue of outgoing group messages per process.

    A sender's frame handler never waits on Redis: it enqueues and moves on, so
    a stalled Redis cannot hold up the next frame of that socket (its ack, its
    error). One task publishes in order, so events of a room leave this process
    in the order they were committed. Callers that want backpressure (a reply
    streaming deltas) await the returned future.
    """

    MAX_BACKLOG = 10_000

    def __init__(self) -> None:
        self._queue: asyncio.Queue[tuple[str, dict[str, Any], asyncio.Future[bool]]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def publish(self, group: str, message: dict[str, Any]) -> asyncio.Future[bool]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()
        if self._queue is None or self._loop is not loop:
            # A new event loop (tests run one per test): start afresh on it.
            self._loop = loop
            self._queue = asyncio.Queue()
            self._task = None
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="group-publisher")
        if self._queue.qsize() >= self.MAX_BACKLOG:
            # Redis has been unreachable for a while; the events are in the
            # database and clients resume from it.
            logger.warning("publish backlog full: dropping a message to %s", group)
            done.set_result(False)
            return done
        self._queue.put_nowait((group, message, done))
        return done

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            group, message, done = await self._queue.get()
            if not layer_health.healthy:
                # Sockets are being closed and will resume from the database:
                # fail fast instead of timing out once per queued event.
                ok = False
            else:
                ok = await group_send_safe(group, message)
            if not done.done():
                done.set_result(ok)


def group_publish(group: str, message: dict[str, Any]) -> asyncio.Future[bool]:
    """Queue a group message; returns a future of whether it was sent."""
    return publisher.publish(group, message)


class Closable(Protocol):
    async def close_for_outage(self) -> None: ...


class LayerHealth:
    """Watches Redis from this process and closes local sockets when it fails.

    While Redis is down or stalled, pub/sub silently loses events; closing the
    sockets makes every client reconnect (with backoff) and resume from the
    database once Redis answers again.

    A refused connection is an outage at once. A slow answer is only a strike:
    a busy event loop (a big fan-out, a burst of handshakes) reads replies late
    too, and closing every socket for that would turn load into an outage.
    """

    STRIKES = 2

    def __init__(self) -> None:
        self._sockets: weakref.WeakSet[Any] = weakref.WeakSet()
        self._task: asyncio.Task[None] | None = None
        self._failed = False
        self._strikes = 0

    def register(self, consumer: Closable) -> None:
        self._sockets.add(consumer)
        self._ensure_task()

    def unregister(self, consumer: Closable) -> None:
        self._sockets.discard(consumer)

    def report_failure(self, exc: BaseException | None = None) -> None:
        """A layer operation failed: a timeout is a strike, anything else an outage."""
        if isinstance(exc, (TimeoutError, RedisTimeoutError)):
            self._strike(exc)
        else:
            self._fail(exc)
        # The watch is what clears the failure once Redis answers again.
        self._ensure_task()

    @property
    def healthy(self) -> bool:
        return not self._failed

    def _strike(self, exc: BaseException) -> None:
        self._strikes += 1
        if self._strikes >= self.STRIKES:
            self._fail(exc)

    def _fail(self, exc: BaseException | None) -> None:
        if not self._failed:
            logger.warning(
                "channel layer unreachable (%s): closing local sockets", type(exc).__name__ if exc else "error"
            )
            self._failed = True
        asyncio.get_running_loop().create_task(self._close_all())

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
                await asyncio.wait_for(client.ping(), settings.LAYER_HEALTH_TIMEOUT)
            except TimeoutError as exc:
                self._strike(exc)
                continue
            except Exception as exc:  # noqa: BLE001 - refused, reset: Redis is gone
                self._fail(exc)
                continue
            self._strikes = 0
            if self._failed:
                logger.warning("channel layer reachable again")
                self._failed = False
                # A restarted Redis lost the list-based layer's group members.
                await hub.rejoin()

    async def _close_all(self) -> None:
        sockets = list(self._sockets)
        self._sockets = weakref.WeakSet()
        for consumer in sockets:
            try:
                await consumer.close_for_outage()
            except Exception:
                logger.debug("close during outage failed", exc_info=True)


layer_health = LayerHealth()
publisher = Publisher()


class Receiver(Protocol):
    async def group_deliver(self, message: dict[str, Any]) -> None: ...


class GroupHub:
    """One channel-layer channel per process, fanned out to local sockets.

    Sockets never get a channel of their own: the process's hub joins each
    group once, however many of its sockets are in it, and hands every group
    message to them in one loop. So a room event costs one PUBLISH, one
    deserialisation per process and one pre-serialised frame written per
    socket, not a queue, a task wake-up and a decode per socket (the naive
    Channels design). Handshakes cost no Redis round trip unless the process
    is new to the room.
    """

    def __init__(self) -> None:
        self.members: dict[str, set[Receiver]] = {}
        self.channel: str | None = None
        self._joined: set[str] = set()
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def join(self, group: str, receiver: Receiver) -> None:
        """Add a local socket to a group; returns once the process is subscribed."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # A new event loop (tests run one per test): nothing carries over.
            self.__init__()  # type: ignore[misc]
            self._loop = loop
        self.members.setdefault(group, set()).add(receiver)
        if group in self._joined:
            return
        async with self._lock:
            channel = await self._channel()
            if group not in self._joined and receiver in self.members.get(group, ()):
                await get_channel_layer().group_add(group, channel)
                self._joined.add(group)

    def joined(self, group: str, receiver: Receiver) -> bool:
        """Whether ``receiver`` hears ``group`` (its subscription went through)."""
        return group in self._joined and receiver in self.members.get(group, ())

    async def leave(self, group: str, receiver: Receiver) -> None:
        members = self.members.get(group)
        if members is None:
            return
        members.discard(receiver)
        if members:
            return
        async with self._lock:
            if self.members.get(group):
                return  # someone joined meanwhile
            self.members.pop(group, None)
            if group in self._joined and self.channel is not None:
                self._joined.discard(group)
                try:
                    await get_channel_layer().group_discard(group, self.channel)
                except Exception as exc:  # noqa: BLE001 - an outage forgets it anyway
                    logger.debug("group_discard %s failed: %s", group, type(exc).__name__)

    async def _channel(self) -> str:
        if self.channel is None:
            # The default prefix: the list-based layer reads every process-local
            # channel through one shared key per prefix.
            self.channel = await get_channel_layer().new_channel()
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read(), name="group-hub")
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.get_running_loop().create_task(self._refresh(), name="group-hub-refresh")
        return self.channel

    async def _read(self) -> None:
        layer = get_channel_layer()
        while True:
            assert self.channel is not None
            try:
                message = await layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the list-based layer polls Redis
                logger.warning("group hub receive failed: %s", type(exc).__name__)
                layer_health.report_failure(exc)
                await asyncio.sleep(1.0)
                continue
            receivers = self.members.get(message.get("group", ""))
            if not receivers:
                continue
            for receiver in list(receivers):
                try:
                    await receiver.group_deliver(message)
                except Exception:
                    logger.exception("delivering %s failed", message.get("type"))

    async def rejoin(self) -> None:
        if self.channel is None:
            return
        for group in list(self._joined):
            try:
                await get_channel_layer().group_add(group, self.channel)
            except Exception as exc:  # noqa: BLE001
                logger.warning("group refresh failed: %s", type(exc).__name__)
                return

    async def _refresh(self) -> None:
        """Re-add the hub to its groups: the list-based layer forgets members
        after group_expiry, counted from group_add, not from activity."""
        while True:
            await asyncio.sleep(settings.GROUP_REFRESH_SECONDS)
            await self.rejoin()


hub = GroupHub()


def task_spawn(coro: Awaitable[None], name: str) -> asyncio.Task[None]:
    """Run background work the process keeps a reference to (an unreferenced
    task may be garbage-collected mid-flight) and whose failures get logged."""
    task = asyncio.ensure_future(coro)
    task.set_name(name)
    _tasks.add(task)

    def _done(t: asyncio.Task[None]) -> None:
        _tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            logger.error("background task %s failed", name, exc_info=t.exception())

    task.add_done_callback(_done)
    return task


_tasks: set[asyncio.Task[None]] = set()


async def realtime_stop() -> None:
    """Stop this process's background tasks (tests switch event loops)."""
    tasks = [publisher._task, hub._reader, hub._refresher, layer_health._task]
    for task in tasks:
        if task is not None and not task.done():
            task.cancel()
    pending = [t for t in tasks if t is not None and t.get_loop() is asyncio.get_running_loop()]
    if pending:
        _, stuck = await asyncio.wait(pending, timeout=5)
        for task in stuck:
            logger.warning("background task %s did not stop", task.get_name())
