"""Who is in a room, counted once per user however many tabs, across processes.

Each open socket holds one entry ``username|channel`` scored with its expiry
time; sockets refresh theirs periodically. A process killed with ``kill -9``
never says goodbye, so its entries simply age out and the next sweep tells the
room.
"""

from __future__ import annotations

import time

from django.conf import settings

from .kv import kv_client

# Single-process fallback: room key -> {entry: expiry}.
_local: dict[str, dict[str, float]] = {}


def _key(room_id: int) -> str:
    return f"chat:presence:{room_id}"


def _entry(username: str, channel: str) -> str:
    return f"{username}|{channel}"


def _users(entries: list[str]) -> list[str]:
    return sorted({e.rsplit("|", 1)[0] for e in entries})


async def presence_join(room_id: int, username: str, channel: str) -> list[str]:
    """Record the socket and return the room's users afterwards."""
    expires = time.time() + settings.PRESENCE_TTL_SECONDS
    client = kv_client()
    if client is None:
        _local.setdefault(_key(room_id), {})[_entry(username, channel)] = expires
        return await presence_list(room_id)
    async with client.pipeline(transaction=True) as pipe:
        pipe.zadd(_key(room_id), {_entry(username, channel): expires})
        pipe.expire(_key(room_id), settings.PRESENCE_TTL_SECONDS * 2)
        await pipe.execute()
    return await presence_list(room_id)


async def presence_leave(room_id: int, username: str, channel: str) -> list[str]:
    client = kv_client()
    if client is None:
        _local.get(_key(room_id), {}).pop(_entry(username, channel), None)
        return await presence_list(room_id)
    await client.zrem(_key(room_id), _entry(username, channel))
    return await presence_list(room_id)


async def presence_list(room_id: int) -> list[str]:
    now = time.time()
    client = kv_client()
    if client is None:
        entries = _local.get(_key(room_id), {})
        return _users([e for e, exp in entries.items() if exp > now])
    return _users(await client.zrangebyscore(_key(room_id), now, "+inf"))


async def presence_prune(room_id: int) -> bool:
    """Drop entries of sockets that stopped refreshing; True if any went."""
    now = time.time()
    client = kv_client()
    if client is None:
        entries = _local.get(_key(room_id), {})
        stale = [e for e, exp in entries.items() if exp <= now]
        for e in stale:
            del entries[e]
        return bool(stale)
    return bool(await client.zremrangebyscore(_key(room_id), "-inf", now))
