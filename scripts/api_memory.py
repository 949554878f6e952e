"""Memory per listener: N Server-Sent Events streams vs N WebSockets on one
server process (docs/api.md states the result).

For each kind and each server (daphne, uvicorn) it starts a fresh one-process
stack (deploy/stack.py: the production flags through deploy/entrypoint.sh, a
private Redis, SQLite), opens a few listeners and closes them (warm-up:
imports, the room's group, caches), reads the process's RSS, opens N
listeners to one room from this process, waits for them to settle, reads RSS
again, and reports (after - before) / N. Listeners are raw asyncio
connections on this side: no client library's memory is in the figure.

    .venv/bin/python scripts/api_memory.py [--count 1000] [--servers daphne,uvicorn]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.stack import Stack


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


async def sse_open(port: int, token: str, room: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        (
            f"GET /api/v1/rooms/{room}/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    head = await reader.readuntil(b"event: ready")
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(head[:200])
    return reader, writer


async def ws_open(port: int, cookie: str, room: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /ws/rooms/{room}/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: http://127.0.0.1:{port}\r\nCookie: sessionid={cookie}\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(head[:200])
    await reader.read(1)  # the first byte of hello: accepted and greeted
    return reader, writer


async def drain(reader: asyncio.StreamReader) -> None:
    try:
        while await reader.read(65536):
            pass
    except (ConnectionError, asyncio.CancelledError):
        pass


async def measure(kind: str, port: int, pid: int, credential: str, room: str, count: int) -> dict[str, float]:
    opener = sse_open if kind == "sse" else ws_open
    warm = [await opener(port, credential, room) for _ in range(20)]
    for _, writer in warm:
        writer.close()
    await asyncio.sleep(3)
    before, threads_before = rss_kib(pid), threads(pid)
    started = time.monotonic()
    conns = []
    for start in range(0, count, 50):
        conns += await asyncio.gather(*(opener(port, credential, room) for _ in range(start, min(count, start + 50))))
    opened = time.monotonic() - started
    readers = [asyncio.ensure_future(drain(reader)) for reader, _ in conns]
    await asyncio.sleep(8)
    after, threads_after = rss_kib(pid), threads(pid)
    for task in readers:
        task.cancel()
    for _, writer in conns:
        writer.close()
    return {
        "rss_before_mib": round(before / 1024, 1),
        "rss_after_mib": round(after / 1024, 1),
        "kib_per_listener": round((after - before) / count, 1),
        "threads_before": threads_before,
        "threads_after": threads_after,
        "open_seconds": round(opened, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--servers", default="daphne,uvicorn")
    args = parser.parse_args()
    results = []
    for server in args.servers.split(","):
        for kind in ("sse", "ws"):
            with (
                tempfile.TemporaryDirectory() as workdir,
                Stack(
                    workdir,
                    daphne_count=1,
                    nginx=False,
                    servers=[server],
                    database_url=f"sqlite:///{workdir}/db.sqlite3",
                    env_overrides={
                        "CHAT_MAX_SOCKETS_PER_USER": "0",
                        "API_SSE_MAX_PER_USER": "0",
                        "API_RATE_LIMIT": "0",
                    },
                ) as stack,
            ):
                stack.user_create("listener")
                stack.room_create("memory")
                token = stack.manage("createapitoken", "listener").stdout.strip().splitlines()[-1]
                cookie = stack.login("listener")["sessionid"]
                pid = stack.daphne_pid(0)
                assert pid is not None
                port = stack.daphne_ports[0]
                credential = token if kind == "sse" else cookie
                result = asyncio.run(measure(kind, port, pid, credential, "memory", args.count))
                result.update(server=server, kind=kind, count=args.count)
                results.append(result)
                sys.stdout.write(json.dumps(result) + "\n")
                sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
