"""A browser tab, minus the browser: the reconnect, resume and repair logic of
``rooms/static/rooms/room.js`` over a real ``websockets`` connection.

What it does, like the page:
- on any close that is not terminal (4401/4403/4404) it retries with the same
  backoff (base 0.5 s, doubling, capped at 10 s, jitter on the upper half) and
  reconnects with ``?after=<newest id seen>``;
- after every hello it re-sends the messages it has not seen acknowledged (the
  server deduplicates by ``client_id``);
- a ``seq`` jump, or a hole between known seqs, is filled with ``history.fetch``
  (once per hole per socket, at most 100 rows at a time);
- a ``truncated`` hello makes it resume again at once.

On top of that it records what a test needs to judge the run: every frame with
the socket it came on, every close, every hello, and when each send was answered.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

BACKOFF_BASE = 0.5
BACKOFF_MAX = 10.0
HISTORY_MAX = 100
TERMINAL_CLOSES = {4401, 4403, 4404}
_names = itertools.count(1)


@dataclass
class Send:
    client_id: str
    text: str
    sent_at: list[float] = field(default_factory=list)  # one entry per (re)send
    answered_at: float | None = None
    answer: dict[str, Any] | None = None  # the message or the error frame


class Tab:
    def __init__(
        self,
        ws_url: str,
        slug: str,
        headers: Mapping[str, str],
        name: str = "",
        *,
        from_start: bool = True,
        rcvbuf: int | None = None,
    ) -> None:
        """``from_start``: the room was empty when the tab opened, so every seq
        from 1 belongs in its view (a missing seq 1 is a hole, not "older").
        ``rcvbuf``: a small kernel receive buffer, so a paused tab really stops
        the server's writes instead of parking megabytes in the kernel."""
        self.ws_url = ws_url
        self.slug = slug
        self.headers = dict(headers)
        self.name = name or f"tab{next(_names)}"
        self.from_start = from_start
        self.rcvbuf = rcvbuf

        self.view: dict[int, dict[str, Any]] = {}  # message id -> latest payload
        self.streams: dict[int, dict[str, Any]] = {}  # reply id -> {"text", "seq"}
        self.last_id = 0
        self.last_seq = 0
        self.sends: dict[str, Send] = {}
        self.pending: list[str] = []  # client_ids not yet acknowledged, in order
        self.inflight: list[str] = []  # client_ids sent on the current socket
        self.frames: list[tuple[int, float, dict[str, Any]]] = []  # (socket number, time, frame)
        self.hellos: list[tuple[float, int | None]] = []  # (time, after)
        self.closes: list[tuple[float, int | None]] = []  # (time, code)
        self.connect_failures: list[tuple[float, str]] = []
        self.errors: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.socket_no = 0
        self.live = False
        self.stopped = False
        self.terminal_code: int | None = None

        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._attempt = 0
        self._resume_now = False
        self._holes_asked: set[int] = set()
        self._reading = asyncio.Event()
        self._reading.set()
        self._changed = asyncio.Event()

    # --- lifecycle -------------------------------------------------------------

    def start(self) -> Tab:
        self._task = asyncio.ensure_future(self._run())
        self._task.set_name(f"tab-{self.name}")
        return self

    async def stop(self) -> None:
        self.stopped = True
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    async def _run(self) -> None:
        while not self.stopped:
            url = f"{self.ws_url}/ws/rooms/{self.slug}/"
            after = self.last_id or None
            if after:
                url += f"?after={after}"
            try:
                self._ws = await websockets.connect(
                    url,
                    additional_headers=self.headers,
                    max_size=4 * 2**20,
                    open_timeout=10,
                    ping_interval=None,  # like a browser: the server pings, we answer
                    max_queue=4 if self.rcvbuf else 16,
                    sock=self._socket_make(url) if self.rcvbuf else None,
                )
            except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
                self.connect_failures.append((time.monotonic(), type(exc).__name__))
                await self._backoff()
                continue
            self.socket_no += 1
            self.inflight = []
            self._holes_asked = set()
            await self._read(self._ws, after)
            code = self._ws.close_code
            self._ws = None
            self.live = False
            self.closes.append((time.monotonic(), code))
            self._changed.set()
            if code in TERMINAL_CLOSES:
                self.terminal_code = code
                return
            if self._resume_now:
                self._resume_now = False
                continue
            await self._backoff()

    def _socket_make(self, url: str) -> socket.socket:
        host_port = url.split("//", 1)[1].split("/", 1)[0]
        host, _, port = host_port.partition(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Before connect(), so the advertised window stays small.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf or 4096)
        sock.connect((host, int(port or 80)))
        sock.setblocking(False)
        return sock

    async def _backoff(self) -> None:
        ceiling = min(BACKOFF_MAX, BACKOFF_BASE * 2**self._attempt)
        self._attempt += 1
        await asyncio.sleep(ceiling / 2 + random.random() * ceiling / 2)

    async def _read(self, ws: ClientConnection, after: int | None) -> None:
        try:
            while True:
                await self._reading.wait()
                raw = await ws.recv()
                frame = json.loads(raw)
                self.frames.append((self.socket_no, time.monotonic(), frame))
                await self._handle(ws, frame, after)
                self._changed.set()
        except websockets.ConnectionClosed:
            pass

    # --- sending -----------------------------------------------------------------

    async def post(self, text: str) -> str:
        """Queue a message like the composer does; sent now if the socket is open."""
        client_id = uuid.uuid4().hex
        self.sends[client_id] = Send(client_id, text)
        self.pending.append(client_id)
        if self.live:
            await self._send_pending(client_id)
        return client_id

    async def send_frame(self, payload: dict[str, Any]) -> bool:
        ws = self._ws
        if ws is None or not self.live:
            return False
        try:
            await ws.send(json.dumps(payload))
        except websockets.ConnectionClosed:
            return False
        return True

    async def _send_pending(self, client_id: str) -> None:
        item = self.sends[client_id]
        if await self.send_frame({"type": "message.send", "text": item.text, "client_id": client_id}):
            item.sent_at.append(time.monotonic())
            self.inflight.append(client_id)

    # --- frames ------------------------------------------------------------------

    async def _handle(self, ws: ClientConnection, frame: dict[str, Any], after: int | None) -> None:
        kind = frame.get("type")
        if kind == "hello":
            self.live = True
            self._attempt = 0
            self.hellos.append((time.monotonic(), after))
            for message in frame["messages"]:
                self._upsert(message)
            for stream in frame["streaming"]:
                self._stream_resume(stream)
            if frame.get("truncated"):
                self._resume_now = True
                await ws.close()
                return
            await self._holes_fill()
            for client_id in list(self.pending):
                await self._send_pending(client_id)
        elif kind == "message":
            message = frame["message"]
            jump = message["seq"] > self.last_seq + 1
            self._upsert(message)
            if message.get("client_id") in self.sends and message["client_id"] in self.inflight:
                self._acknowledge(message["client_id"], frame)
            if jump:
                await self._holes_fill()
        elif kind == "error":
            self.errors.append(frame)
            # Answers come in the order the frames were sent: this one is the oldest in flight.
            if self.inflight:
                self._acknowledge(self.inflight[0], frame)
        elif kind == "history":
            for message in frame["messages"]:
                self._upsert(message)
            await self._holes_fill()
        elif kind == "assistant.start":
            self.streams.setdefault(frame["reply_id"], {"text": "", "seq": 0})
            self._upsert(frame["message"])
        elif kind == "assistant.delta":
            stream = self.streams.get(frame["reply_id"])
            if stream is not None and frame["seq"] > stream["seq"]:
                stream["seq"] = frame["seq"]
                stream["text"] += frame["text"]
        elif kind == "assistant.end":
            self.streams.pop(frame["reply_id"], None)
            self._upsert(frame["message"])

    def _acknowledge(self, client_id: str, frame: dict[str, Any]) -> None:
        item = self.sends[client_id]
        if item.answered_at is None:
            item.answered_at = time.monotonic()
            item.answer = frame
        if client_id in self.inflight:
            self.inflight.remove(client_id)
        if client_id in self.pending:
            self.pending.remove(client_id)

    def _upsert(self, message: dict[str, Any]) -> None:
        known = self.view.get(message["id"])
        # A streaming copy (from history or a start frame) never replaces a final one.
        if known is not None and known["status"] != "streaming" and message["status"] == "streaming":
            return
        self.view[message["id"]] = message
        self.last_id = max(self.last_id, message["id"])
        self.last_seq = max(self.last_seq, message["seq"])
        client_id = message.get("client_id")
        if client_id in self.pending and self.sends[client_id].answered_at is None:
            # Our own message came back some other way (a resume or history).
            self.pending.remove(client_id)

    def _stream_resume(self, stream: dict[str, Any]) -> None:
        self.streams[stream["reply_id"]] = {"text": stream["text"], "seq": stream["seq"]}
        self.last_id = max(self.last_id, stream["reply_id"])
        known = self.view.get(stream["reply_id"])
        if known is None:
            # The hello's stream entry has no room seq: a hole fetch brings the row.
            self.view[stream["reply_id"]] = {
                "id": stream["reply_id"],
                "seq": None,
                "status": "streaming",
                "role": "assistant",
                "text": stream["text"],
            }

    async def _holes_fill(self) -> None:
        rows = sorted((m for m in self.view.values() if m["seq"] is not None), key=lambda m: m["seq"])
        previous = 0 if self.from_start else (rows[0]["seq"] if rows else 0)
        for row in rows:
            gap = row["seq"] - previous - 1
            if gap > 0 and row["id"] not in self._holes_asked:
                self._holes_asked.add(row["id"])
                await self.send_frame({"type": "history.fetch", "before": row["id"], "limit": min(gap, HISTORY_MAX)})
            previous = row["seq"]

    # --- judging -------------------------------------------------------------------

    def ordered(self) -> list[dict[str, Any]]:
        return sorted(self.view.values(), key=lambda m: (m["seq"] is None, m["seq"] or 0))

    def live_deliveries(self) -> list[int]:
        """Ids of user messages pushed to this tab (hello and message frames, every
        socket): a repeat here is a duplicate the server sent, not a repair the
        tab asked for."""
        ids: list[int] = []
        for _, _, frame in self.frames:
            if frame["type"] == "hello":
                ids += [m["id"] for m in frame["messages"] if m["role"] == "user"]
            elif frame["type"] == "message":
                ids.append(frame["message"]["id"])
        return ids

    def received_texts(self) -> set[str]:
        return {m["text"] for m in self.view.values()}

    async def wait_for(self, predicate: Callable[[], bool], within: float, what: str) -> None:
        """Wait until ``predicate()``; a TimeoutError names the tab and what was awaited."""
        deadline = time.monotonic() + within
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.name}: {what} not reached within {within:.0f} s")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.2))
            except TimeoutError:
                pass


async def tabs_wait(tabs: list[Tab], predicate: Callable[[Tab], bool], within: float, what: str) -> None:
    await asyncio.gather(*(tab.wait_for(lambda t=tab: predicate(t), within, what) for tab in tabs))
