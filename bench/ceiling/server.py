"""The Python ceiling: a minimal `websockets` broadcast server.

Rooms are URL paths; every text message received is broadcast, as-is, to every
socket of its room (the sender included). `broadcast()` encodes the frame once
and writes it to every socket without awaiting, which is the least a Python
server can do per socket. Compression is off, as it is on the other rows.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
from collections import defaultdict

from websockets.asyncio.server import ServerConnection, broadcast, serve

logger = logging.getLogger("bench.ceiling")

rooms: dict[str, set[ServerConnection]] = defaultdict(set)


async def room_handler(ws: ServerConnection) -> None:
    room = rooms[ws.request.path]
    room.add(ws)
    try:
        async for message in ws:
            broadcast(room, message)
    finally:
        room.discard(ws)
        if not room:
            rooms.pop(ws.request.path, None)


async def server_run(host: str, port: int) -> None:
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(room_handler, host, port, compression=None, max_size=64 * 1024, backlog=1024):
        gc.freeze()
        await stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(server_run(args.host, args.port))


if __name__ == "__main__":
    main()
