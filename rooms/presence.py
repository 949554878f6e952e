"""Who is in a room, counted once per user however many tabs, across processes.

Each open socket holds one entry ``username|socket`` scored with its expiry
time. One task per process refreshes all of its sockets' entries in a single
pipeline per room (not one round trip per socket), and prunes entries that
stopped being refreshed: a process killed with ``kill -9`` never says goodbye,
so its sockets age out and the room is told.
"""

from __future__ import annotations

import asyncio
import logging
import time

from django.conf import settings

from . import events
from .kv import kv_client
from .realtime import group_publish, room_group

logger = logging.getLogger(__name__)

# Single-process fallback (no Redis): room key -> {entry: expiry}.
_local: dict[str, dict[str, float]] = {}
# This process's sockets: room id -> {entry}.
_mine: dict[int, set[str]] = {}
_keeper: asyncio.Task[None] | None = None


def _key(room_id: int) -> str:
    return f"chat:presence:{room_id}"


def _entry(username: str, socket_id: str) -> str:
    return f"{username}|{socket_id}"


def _users(entries: list[str]) -> list[str]:
    return sorted({e.rsplit("|", 1)[0] for e in entries})


async def presence_join(room_id: int, username: str, socket_id: str) -> list[str]:
    """Record the socket and return the room's users afterwards."""
    entry = _entry(username, socket_id)
    _mine.setdefault(room_id, set()).add(entry)
    _keeper_ensure()
    expires = time.time() + settings.PRESENCE_TTL_SECONDS
    client = kv_client()
    if client is None:
        _local.setdefault(_key(room_id), {})[entry] = expires
        return await presence_list(room_id)
    async with client.pipeline(transaction=True) as pipe:
        pipe.zadd(_key(room_id), {entry: expires})
        pipe.expire(_key(room_id), settings.PRESENCE_TTL_SECONDS * 2)
        await pipe.execute()
    return await presence_list(room_id)


async def presence_leave(room_id: int, username: str, socket_id: str) -> list[str]:
    entry = _entry(username, socket_id)
    mine = _mine.get(room_id)
    if mine is not None:
        mine.discard(entry)
        if not mine:
            del _mine[room_id]
    client = kv_client()
    if client is None:
        _local.get(_key(room_id), {}).pop(entry, None)
        return await presence_list(room_id)
    await client.zrem(_key(room_id), entry)
    return await presence_list(room_id)


async def presence_list(room_id: int) -> list[str]:
    now = time.time()
    client = kv_client()
    if client is None:
        entries = _local.get(_key(room_id), {})
        return _users([e for e, exp in entries.items() if exp > now])
    return _users(await client.zrangebyscore(_key(room_id), now, "+inf"))


def _keeper_ensure() -> None:
    global _keeper
    loop = asyncio.get_running_loop()
    if _keeper is None or _keeper.done() or _keeper.get_loop() is not loop:
        _keeper = loop.create_task(_keeper_run(), name="presence-keeper")


async def _keeper_run() -> None:
    while True:
        await asyncio.sleep(settings.GROUP_REFRESH_SECONDS)
        try:
            await presence_refresh()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - Redis trouble is LayerHealth's to report
            logger.warning("presence refresh failed: %s", type(exc).__name__)


async def presence_refresh() -> None:
    """Extend this process's entries; drop and announce everyone's stale ones."""
    now = time.time()
    expires = now + settings.PRESENCE_TTL_SECONDS
    client = kv_client()
    for room_id, entries in list(_mine.items()):
        if client is None:
            local = _local.setdefault(_key(room_id), {})
            local.update(dict.fromkeys(entries, expires))
            stale = [e for e, exp in local.items() if exp <= now]
            for entry in stale:
                del local[entry]
            pruned = len(stale)
        else:
            async with client.pipeline(transaction=False) as pipe:
                pipe.zadd(_key(room_id), dict.fromkeys(entries, expires))
                pipe.expire(_key(room_id), settings.PRESENCE_TTL_SECONDS * 2)
                pipe.zremrangebyscore(_key(room_id), "-inf", now)
                _, _, pruned = await pipe.execute()
        if pruned:
            users = await presence_list(room_id)
            group_publish(room_group(room_id), events.envelope(events.presence_frame(users), "presence"))


async def presence_stop() -> None:
    """Stop the keeper (tests switch event loops)."""
    global _keeper
    if _keeper is not None and _keeper.get_loop() is asyncio.get_running_loop():
        _keeper.cancel()
        await asyncio.wait([_keeper], timeout=5)
    _keeper = None
