"""Who is in a room, counted once per user however many tabs, across processes;
and how many sockets each user has open.

Each open socket holds an entry ``username|socket`` in its room's sorted set,
scored with its expiry time, and one in its user's set (the per-user socket
cap). One keeper per process refreshes all of its sockets' entries every
PRESENCE_REFRESH_SECONDS in a single pipeline per room, re-adds any that went
missing (Redis restarted empty) and prunes entries nobody refreshed: a process
killed with ``kill -9`` never says goodbye, so its sockets age out within
PRESENCE_TTL_SECONDS + PRESENCE_REFRESH_SECONDS.

What clients are told: Redis keeps, per room, the set of users last announced
and its version. An announcement (a Lua script, so atomic across processes)
compares that set with the live entries, stores the new set, bumps the version
and returns who joined and who left. Clients that asked for deltas
(``?presence=delta``) get ``presence.delta`` ``{since, version, joined, left}``
— a join costs every socket a few bytes, not the room's whole list — and
older clients the whole list as ``presence`` with its ``version``. ``hello``
carries the announced set and its version, so the deltas that follow continue
it exactly; publishes from two processes can cross, and the versions order
them. Changes of a room are announced at most every PRESENCE_COALESCE_MS per
process: a burst of joins is one frame.

Every Redis call here is bounded by REDIS_HANDLER_TIMEOUT: a connect during a
Redis stall is refused (4503) rather than left waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from django.conf import settings

from . import events
from .kv import kv_client
from .realtime import group_publish, room_group
from .tasks import tasks

logger = logging.getLogger(__name__)


class TooManySockets(Exception):
    """The user already has CHAT_MAX_SOCKETS_PER_USER sockets open."""


@dataclass
class Joined:
    users: list[str]
    version: int


# Single-process fallback (no Redis): key -> {entry: expiry}; room -> version;
# room -> users last announced.
_local: dict[str, dict[str, float]] = {}
_local_versions: dict[int, int] = {}
_local_shown: dict[int, set[str]] = {}
# This process's sockets: room id -> {entry}; user id -> {socket id}.
_mine: dict[int, set[str]] = {}
_mine_sockets: dict[int, set[str]] = {}
# Rooms whose change waits to be announced.
_dirty: set[int] = set()
_wake: asyncio.Event | None = None


def _reset() -> None:
    global _wake
    _dirty.clear()
    _wake = None


tasks.on_new_loop(_reset)


def _key(room_id: int) -> str:
    return f"chat:presence:{room_id}"


def _version_key(room_id: int) -> str:
    return f"chat:presence:v:{room_id}"


def _shown_key(room_id: int) -> str:
    return f"chat:presence:shown:{room_id}"


# KEYS: entries, shown set, version. ARGV: now, key ttl.
# Returns {version, joined, left, users}; the version only moves on a change.
_ANNOUNCE_LUA = """
local entries = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')
local live = {}
for _, entry in ipairs(entries) do
  live[string.match(entry, '^(.*)|[^|]*$')] = true
end
local shown = {}
local joined, left = {}, {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  shown[name] = true
  if not live[name] then table.insert(left, name) end
end
local users = {}
for name, _ in pairs(live) do
  table.insert(users, name)
  if not shown[name] then table.insert(joined, name) end
end
local version = tonumber(redis.call('GET', KEYS[3]) or '0')
if #joined > 0 or #left > 0 then
  if #left > 0 then redis.call('SREM', KEYS[2], unpack(left)) end
  if #joined > 0 then redis.call('SADD', KEYS[2], unpack(joined)) end
  version = redis.call('INCR', KEYS[3])
end
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[2])
return {version, joined, left, users}
"""


def _user_key(user_id: int) -> str:
    return f"chat:sockets:{user_id}"


def _entry(username: str, socket_id: str) -> str:
    return f"{username}|{socket_id}"


def _users(entries: list[str]) -> list[str]:
    return sorted({e.rsplit("|", 1)[0] for e in entries})


def _bounded(awaitable):  # type: ignore[no-untyped-def]
    return asyncio.wait_for(awaitable, settings.REDIS_HANDLER_TIMEOUT)


async def presence_join(room_id: int, user_id: int, username: str, socket_id: str) -> Joined:
    """Record the socket; return the room's users and presence version.

    Raises ``TooManySockets`` (and records nothing) when the user is over
    CHAT_MAX_SOCKETS_PER_USER, and Redis errors or ``TimeoutError`` when Redis
    is away.
    """
    entry = _entry(username, socket_id)
    now = time.time()
    expires = now + settings.PRESENCE_TTL_SECONDS
    cap = settings.CHAT_MAX_SOCKETS_PER_USER
    client = kv_client()
    if client is None:
        sockets = _local.setdefault(_user_key(user_id), {})
        for stale in [s for s, exp in sockets.items() if exp <= now]:
            del sockets[stale]
        if cap and len(sockets) >= cap:
            raise TooManySockets
        sockets[socket_id] = expires
        room = _local.setdefault(_key(room_id), {})
        before = _users([e for e, exp in room.items() if exp > now])
        room[entry] = expires
        version = _local_versions.get(room_id, 0)
        shown = set(_local_shown.get(room_id, ()))
    else:
        async with client.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(_user_key(user_id), "-inf", now)
            pipe.zadd(_user_key(user_id), {socket_id: expires})
            pipe.zcard(_user_key(user_id))
            pipe.expire(_user_key(user_id), settings.PRESENCE_TTL_SECONDS * 2)
            pipe.zrangebyscore(_key(room_id), now, "+inf")
            pipe.zadd(_key(room_id), {entry: expires})
            pipe.expire(_key(room_id), settings.PRESENCE_TTL_SECONDS * 2)
            pipe.get(_version_key(room_id))
            pipe.smembers(_shown_key(room_id))
            _, _, count, _, entries, _, _, version, shown = await _bounded(pipe.execute())
        if cap and int(count) > cap:
            async with client.pipeline(transaction=True) as pipe:
                pipe.zrem(_user_key(user_id), socket_id)
                pipe.zrem(_key(room_id), entry)
                await _bounded(pipe.execute())
            raise TooManySockets
        before = _users(entries)
        version = int(version or 0)
    _mine.setdefault(room_id, set()).add(entry)
    _mine_sockets.setdefault(user_id, set()).add(socket_id)
    _keeper_ensure()
    if username not in before:
        presence_changed(room_id)
    # The announced set at that version (deltas continue it), and the joiner,
    # who is announced with the next delta.
    return Joined(users=sorted({*shown, username}), version=version)


async def presence_leave(room_id: int, user_id: int, username: str, socket_id: str) -> None:
    entry = _entry(username, socket_id)
    mine = _mine.get(room_id)
    if mine is not None:
        mine.discard(entry)
        if not mine:
            del _mine[room_id]
    sockets = _mine_sockets.get(user_id)
    if sockets is not None:
        sockets.discard(socket_id)
        if not sockets:
            del _mine_sockets[user_id]
    now = time.time()
    client = kv_client()
    if client is None:
        _local.get(_user_key(user_id), {}).pop(socket_id, None)
        room = _local.get(_key(room_id), {})
        room.pop(entry, None)
        after = _users([e for e, exp in room.items() if exp > now])
    else:
        async with client.pipeline(transaction=True) as pipe:
            pipe.zrem(_user_key(user_id), socket_id)
            pipe.zrem(_key(room_id), entry)
            pipe.zrangebyscore(_key(room_id), now, "+inf")
            *_, entries = await _bounded(pipe.execute())
        after = _users(entries)
    if username not in after:
        presence_changed(room_id)


async def presence_list(room_id: int) -> list[str]:
    now = time.time()
    client = kv_client()
    if client is None:
        entries = _local.get(_key(room_id), {})
        return _users([e for e, exp in entries.items() if exp > now])
    return _users(await _bounded(client.zrangebyscore(_key(room_id), now, "+inf")))


def presence_changed(room_id: int) -> None:
    """Announce the room's presence soon (coalesced)."""
    global _wake
    _dirty.add(room_id)
    if _wake is None:
        _wake = asyncio.Event()
    _wake.set()
    tasks.ensure("presence-announcer", _announcer_run)


async def _announcer_run() -> None:
    while True:
        assert _wake is not None
        await _wake.wait()
        _wake.clear()
        await asyncio.sleep(settings.PRESENCE_COALESCE_MS / 1000)
        rooms = list(_dirty)
        _dirty.clear()
        for room_id in rooms:
            try:
                await presence_announce(room_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis trouble is LayerHealth's to report
                logger.warning("presence announce failed: %s", type(exc).__name__)


async def presence_announce(room_id: int) -> None:
    """Publish what changed in the room's users since the last announcement,
    as a delta and as the whole list (for clients that take no deltas)."""
    now = time.time()
    client = kv_client()
    if client is None:
        entries = _local.get(_key(room_id), {})
        live = set(_users([e for e, exp in entries.items() if exp > now]))
        shown = _local_shown.setdefault(room_id, set())
        joined, left = sorted(live - shown), sorted(shown - live)
        if joined or left:
            _local_versions[room_id] = _local_versions.get(room_id, 0) + 1
            _local_shown[room_id] = live
        version, users = _local_versions.get(room_id, 0), sorted(live)
    else:
        script = client.register_script(_ANNOUNCE_LUA)
        keys = [_key(room_id), _shown_key(room_id), _version_key(room_id)]
        version, joined, left, users = await _bounded(script(keys=keys, args=[now, settings.PRESENCE_TTL_SECONDS * 2]))
        joined, left, users = sorted(joined), sorted(left), sorted(users)
    if not joined and not left:
        return
    version = int(version)
    group_publish(
        room_group(room_id),
        events.envelope(
            events.presence_frame(users, version),
            events.PRESENCE,
            delta=events.presence_delta_frame(version - 1, version, joined, left),
        ),
    )


async def presence_snapshot(room_id: int) -> tuple[list[str], int]:
    """The announced users and their version (for a client that lost a delta)."""
    client = kv_client()
    if client is None:
        return sorted(_local_shown.get(room_id, ())), _local_versions.get(room_id, 0)
    async with client.pipeline(transaction=True) as pipe:
        pipe.smembers(_shown_key(room_id))
        pipe.get(_version_key(room_id))
        shown, version = await _bounded(pipe.execute())
    return sorted(shown), int(version or 0)


REFRESH_BATCH = 100  # rooms (or users) per refresh round trip


def _keeper_ensure() -> None:
    tasks.ensure("presence-keeper", _keeper_run)


async def _keeper_run() -> None:
    while True:
        await asyncio.sleep(settings.PRESENCE_REFRESH_SECONDS)
        try:
            await presence_refresh()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - Redis trouble is LayerHealth's to report
            logger.warning("presence refresh failed: %s", type(exc).__name__)


async def presence_refresh() -> None:
    """Extend this process's entries, put back any Redis lost, drop everyone's
    stale ones, and announce every room whose set changed."""
    now = time.time()
    expires = now + settings.PRESENCE_TTL_SECONDS
    client = kv_client()
    if client is None:
        for room_id, entries in list(_mine.items()):
            local = _local.setdefault(_key(room_id), {})
            local.update(dict.fromkeys(entries, expires))
        for key, local in _local.items():
            stale = [e for e, exp in local.items() if exp <= now]
            for entry in stale:
                del local[entry]
            if stale and key.startswith("chat:presence:"):
                presence_changed(int(key.rsplit(":", 1)[1]))
        return
    # In batches, each its own round trip: one pipeline for every room and
    # user of a process (5000 sockets in 500 rooms: 11,500 commands) held the
    # event loop for a quarter of a second every PRESENCE_REFRESH_SECONDS,
    # which was the p99 of every message sent meanwhile.
    rooms = list(_mine.items())
    for start in range(0, len(rooms), REFRESH_BATCH):
        batch = rooms[start : start + REFRESH_BATCH]
        async with client.pipeline(transaction=False) as pipe:
            for room_id, entries in batch:
                pipe.zadd(_key(room_id), dict.fromkeys(entries, expires))
                pipe.expire(_key(room_id), settings.PRESENCE_TTL_SECONDS * 2)
                pipe.zremrangebyscore(_key(room_id), "-inf", now)
            results = await asyncio.wait_for(pipe.execute(), settings.LAYER_OUTAGE_SECONDS)
        for index, (room_id, _) in enumerate(batch):
            added, _, pruned = results[index * 3 : index * 3 + 3]
            if added or pruned:
                presence_changed(room_id)
    users = list(_mine_sockets.items())
    for start in range(0, len(users), REFRESH_BATCH):
        async with client.pipeline(transaction=False) as pipe:
            for user_id, sockets in users[start : start + REFRESH_BATCH]:
                pipe.zadd(_user_key(user_id), dict.fromkeys(sockets, expires))
                pipe.expire(_user_key(user_id), settings.PRESENCE_TTL_SECONDS * 2)
            await asyncio.wait_for(pipe.execute(), settings.LAYER_OUTAGE_SECONDS)
