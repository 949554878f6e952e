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
import threading
import time
import uuid
import weakref
from typing import Any, Protocol

import redis
from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import events
from .kv import redis_options
from .tasks import tasks

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
        tasks.on_new_loop(self._reset)

    def _reset(self) -> None:
        self._queue = None

    def publish(self, group: str, message: dict[str, Any]) -> asyncio.Future[bool]:
        loop = tasks.bind()
        done: asyncio.Future[bool] = loop.create_future()
        if self._queue is None:
            self._queue = asyncio.Queue()
        tasks.ensure("group-publisher", self._run)
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


BOOT_KEY = "chat:layer:boot"


class LayerHealth:
    """Watches Redis from this process and closes local sockets when it fails.

    While Redis is down or stalled, pub/sub silently loses events; closing the
    sockets (4503) makes every client reconnect with backoff and resume from
    the database once Redis answers again.

    - Every LAYER_HEALTH_INTERVAL a thread of its own reads a boot marker on
      a Redis connection of its own (``_Probe``). A refused connection is an
      outage at once; no answer for LAYER_OUTAGE_SECONDS (a stalled Redis) is
      one too. Looking from a thread matters: an event loop busy with a storm
      of handshakes or a big fan-out reads its own replies late, and taking
      that for a stalled Redis closed every socket in the middle of a
      reconnect storm, which only made a bigger one.
    - The marker is a random value set once per Redis lifetime. If it vanishes
      or changes, Redis restarted (or was flushed) between two looks: its pub/sub
      subscriptions, presence and rate counters are gone, which is an outage
      too, however short.
    - Recovery is confirmed, not assumed: sockets are accepted again only once
      a message this process published has come back through its own
      subscription. channels-redis resubscribes about a second after Redis
      returns, and events published before that are lost.
    """

    def __init__(self) -> None:
        self.group = f"proc.{uuid.uuid4().hex}"
        self._reset()
        tasks.on_new_loop(self._reset)

    def _reset(self) -> None:
        self._sockets: weakref.WeakSet[Any] = weakref.WeakSet()
        self._failed = False
        self._boot: str | None = None
        self._echo_token = ""
        self._echo_seen: asyncio.Event | None = None  # made on the running loop

    def register(self, consumer: Closable) -> None:
        self._sockets.add(consumer)
        self._ensure_task()

    def unregister(self, consumer: Closable) -> None:
        self._sockets.discard(consumer)

    def report_failure(self, exc: BaseException | None = None) -> None:
        """A layer operation failed. A timeout is left to the watch (it decides by
        how long Redis has not answered); anything else is an outage now."""
        if not isinstance(exc, (TimeoutError, RedisTimeoutError)):
            self._fail(exc)
        self._ensure_task()

    @property
    def healthy(self) -> bool:
        return not self._failed

    def _fail(self, exc: BaseException | None, why: str = "") -> None:
        if not self._failed:
            logger.warning(
                "channel layer unreachable (%s): closing local sockets",
                why or (type(exc).__name__ if exc else "error"),
            )
            self._failed = True
        tasks.spawn(self._close_all(), name="layer-outage-close")

    def _ensure_task(self) -> None:
        if settings.REDIS_URL:
            tasks.ensure("layer-health", self._watch)

    async def _watch(self) -> None:
        probe = _probe_ensure()
        while True:
            await asyncio.sleep(settings.LAYER_HEALTH_INTERVAL)
            last_ok, boot, refused = probe.state()
            if refused is not None:
                self._fail(refused)
                continue
            if time.monotonic() - last_ok >= settings.LAYER_OUTAGE_SECONDS:
                self._fail(None, f"no answer for {settings.LAYER_OUTAGE_SECONDS:.0f} s")
                continue
            if boot is None:
                continue  # not looked yet
            if self._boot is not None and boot != self._boot:
                self._fail(None, "Redis restarted and lost its data")
            self._boot = boot
            if self._failed and await self._echo_confirm():
                logger.warning("channel layer reachable again")
                self._failed = False
                # A restarted Redis lost the list-based layer's group members.
                await hub.rejoin()

    async def _echo_confirm(self) -> bool:
        """Publish to this process's own group and wait for it to come back."""
        try:
            if not hub.joined(self.group, self):
                await asyncio.wait_for(hub.join(self.group, self), settings.LAYER_HEALTH_TIMEOUT)
            self._echo_token = uuid.uuid4().hex
            self._echo_seen = asyncio.Event()
            message = {"type": events.HEALTH_ECHO, "token": self._echo_token, "group": self.group}
            await asyncio.wait_for(get_channel_layer().group_send(self.group, message), settings.LAYER_HEALTH_TIMEOUT)
            await asyncio.wait_for(self._echo_seen.wait(), settings.LAYER_HEALTH_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - not back yet: the next tick tries again
            logger.info("channel layer not confirmed yet: %s", type(exc).__name__)
            return False
        return True

    async def group_deliver(self, message: dict[str, Any]) -> None:
        token = message.get("token")
        if message.get("type") == events.HEALTH_ECHO and token == self._echo_token and self._echo_seen is not None:
            self._echo_seen.set()

    async def _close_all(self) -> None:
        sockets = list(self._sockets)
        self._sockets = weakref.WeakSet()
        for consumer in sockets:
            try:
                await consumer.close_for_outage()
            except Exception:
                logger.debug("close during outage failed", exc_info=True)


class _Probe:
    """Reads the boot marker from a thread, every LAYER_HEALTH_INTERVAL, with
    a blocking client whose reads time out after LAYER_HEALTH_TIMEOUT."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._last_ok = time.monotonic()
        self._boot: str | None = None
        self._refused: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="redis-health", daemon=True)
        self._thread.start()

    def state(self) -> tuple[float, str | None, BaseException | None]:
        """(when Redis last answered, its boot marker then, a refusal since)."""
        with self._lock:
            return self._last_ok, self._boot, self._refused

    def _run(self) -> None:
        client = redis.Redis.from_url(self.url, **redis_options(settings.LAYER_HEALTH_TIMEOUT))
        while True:
            time.sleep(settings.LAYER_HEALTH_INTERVAL)
            try:
                boot = client.get(BOOT_KEY)
                if boot is None:
                    client.set(BOOT_KEY, uuid.uuid4().hex, nx=True)
                    boot = client.get(BOOT_KEY)
            except (redis.exceptions.TimeoutError, TimeoutError):
                continue  # stalled: the watch decides by how long
            except Exception as exc:  # noqa: BLE001 - refused, reset: Redis is gone
                with self._lock:
                    self._refused = exc
                continue
            with self._lock:
                self._last_ok, self._boot, self._refused = time.monotonic(), str(boot), None


_probes: dict[str, _Probe] = {}


def _probe_ensure() -> _Probe:
    probe = _probes.get(settings.REDIS_URL)
    if probe is None:
        probe = _probes[settings.REDIS_URL] = _Probe(settings.REDIS_URL)
    return probe


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
        self._reset()
        tasks.on_new_loop(self._reset)

    def _reset(self) -> None:
        self.members: dict[str, set[Receiver]] = {}
        self.channel: str | None = None
        self._joined: set[str] = set()
        self._lock = asyncio.Lock()

    async def join(self, group: str, receiver: Receiver) -> None:
        """Add a local socket to a group; returns once the process is subscribed."""
        tasks.bind()
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
        tasks.ensure("group-hub", self._read)
        tasks.ensure("group-hub-refresh", self._refresh)
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
