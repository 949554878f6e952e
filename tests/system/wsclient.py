"""A protocol-aware WebSocket client for system tests: a real `websockets`
connection that keeps the room view a browser would (messages by id, seq
cursor, replies being written) and can reconnect with ``?after``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection


class RoomClient:
    def __init__(self, ws_url: str, slug: str, headers: Mapping[str, str], name: str = "") -> None:
        self.ws_url = ws_url
        self.slug = slug
        self.headers = dict(headers)
        self.name = name or slug
        self.ws: ClientConnection | None = None
        self.frames: list[dict[str, Any]] = []
        self.messages: dict[int, dict[str, Any]] = {}
        self.replies: dict[int, dict[str, Any]] = {}
        self.last_id = 0
        self.hello: dict[str, Any] | None = None
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self.close_code: int | None = None
        self.problems: list[str] = []
        self.chunk_frames = 0
        self.raw_sizes: list[int] = []  # bytes of every frame as it came off the wire

    async def connect(self, after: int | None = None) -> dict[str, Any]:
        url = f"{self.ws_url}/ws/rooms/{self.slug}/"
        if after is not None:
            url += f"?after={after}"
        self.close_code = None
        self._inbox = asyncio.Queue()
        self.ws = await websockets.connect(url, additional_headers=self.headers, max_size=4 * 2**20, open_timeout=10)
        self._reader = asyncio.ensure_future(self._read())
        hello = await self.next("hello")
        self.hello = hello
        return hello

    async def reconnect(self) -> dict[str, Any]:
        await self.close()
        return await self.connect(after=self.last_id)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        self.ws = None

    async def send(self, payload: dict[str, Any] | str) -> None:
        assert self.ws is not None
        await self.ws.send(payload if isinstance(payload, str) else json.dumps(payload))

    async def say(self, text: str, client_id: str | None = None) -> dict[str, Any]:
        """Send a message and wait for the server's echo of it."""
        payload: dict[str, Any] = {"type": "message.send", "text": text}
        if client_id:
            payload["client_id"] = client_id
        await self.send(payload)
        while True:
            frame = await self.next("message", "error")
            if frame["type"] == "error":
                return frame
            if frame["message"]["author"] and frame["message"]["text"] == text:
                return frame["message"]

    async def next(self, *kinds: str, timeout: float = 15) -> dict[str, Any]:
        """The next frame of one of ``kinds`` (others are kept in ``frames`` only)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"{self.name}: no {kinds} within {timeout}s")
            frame = await asyncio.wait_for(self._inbox.get(), remaining)
            if frame["type"] == "__closed__":
                raise ConnectionError(f"{self.name}: closed with {frame['code']} while waiting for {kinds}")
            if frame["type"] in kinds:
                return frame

    async def wait_for(self, predicate, timeout: float = 15, what: str = "condition") -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{self.name}: {what} not reached within {timeout}s")
            await asyncio.sleep(0.05)

    async def _read(self) -> None:
        assert self.ws is not None
        chunks: dict[str, dict[int, str]] = {}
        try:
            async for raw in self.ws:
                self.raw_sizes.append(len(raw.encode()) if isinstance(raw, str) else len(raw))
                frame = json.loads(raw)
                if frame["type"] == "chunk":
                    # A frame too large to send whole (docs/protocol.md): join it back.
                    self.chunk_frames += 1
                    parts = chunks.setdefault(frame["id"], {})
                    parts[frame["index"]] = frame["data"]
                    if len(parts) < frame["count"]:
                        continue
                    del chunks[frame["id"]]
                    frame = json.loads("".join(parts[i] for i in range(frame["count"])))
                self._apply(frame)
                self.frames.append(frame)
                self._inbox.put_nowait(frame)
        except websockets.ConnectionClosed:
            pass
        self.close_code = self.ws.close_code
        self._inbox.put_nowait({"type": "__closed__", "code": self.close_code})

    def _upsert(self, message: dict[str, Any]) -> None:
        self.messages[message["id"]] = message
        self.last_id = max(self.last_id, message["id"])

    def _apply(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "hello":
            for message in frame["messages"]:
                self._upsert(message)
            for stream in frame["streaming"]:
                self.replies[stream["reply_id"]] = {"text": stream["text"], "seq": stream["seq"], "final": None}
        elif kind == "message":
            self._upsert(frame["message"])
        elif kind == "history":
            for message in frame["messages"]:
                self._upsert(message)
        elif kind == "assistant.start":
            self.replies.setdefault(frame["reply_id"], {"text": "", "seq": 0, "final": None})
            self.last_id = max(self.last_id, frame["reply_id"])
        elif kind == "assistant.delta":
            reply = self.replies.setdefault(frame["reply_id"], {"text": "", "seq": 0, "final": None})
            if frame["seq"] != reply["seq"] + 1:
                self.problems.append(f"delta gap/repeat on {frame['reply_id']}: {reply['seq']} -> {frame['seq']}")
            reply["seq"] = frame["seq"]
            reply["text"] += frame["text"]
        elif kind == "assistant.end":
            reply = self.replies.setdefault(frame["reply_id"], {"text": "", "seq": 0, "final": None})
            reply["final"] = frame["message"]
            self._upsert(frame["message"])

    def texts(self) -> list[str]:
        return [m["text"] for m in sorted(self.messages.values(), key=lambda m: m["seq"])]

    def seqs(self) -> list[int]:
        return sorted(m["seq"] for m in self.messages.values())
