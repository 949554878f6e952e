"""Experiment, not a shipped configuration: the project with one cost removed.

channels 4.3's ``AsyncConsumer.dispatch`` awaits ``aclose_old_connections()``
before every handler: a ``sync_to_async`` hop through the single thread-sensitive
executor for every group event, on every socket. ``room.event`` handlers touch no
database, so this ASGI module skips that hop for them only, to measure what it
costs (row ``ours-nohop``). Served as ``bench.experiments.ours_no_dispatch_hop:application``.
"""

from __future__ import annotations

from typing import Any

from chatsite.asgi import application  # noqa: F401 - sets Django up first
from rooms.consumers import RoomConsumer

_dispatch = RoomConsumer.dispatch


async def dispatch_without_db_hop(self: RoomConsumer, message: dict[str, Any]) -> None:
    if message["type"] == "room.event":
        await self.room_event(message)
        return
    await _dispatch(self, message)


RoomConsumer.dispatch = dispatch_without_db_hop
