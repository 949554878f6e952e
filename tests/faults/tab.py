"""A browser tab, minus the browser: the reconnect, resume and repair logic of
``rooms/static/rooms/protocol.js`` and ``sync.js`` over a real ``websockets``
connection.

What it does, like the page:
- on any close that is not terminal (4401/4403/4404) it retries with the same
  backoff (base 0.5 s, doubling, capped at 10 s, jitter on the upper half) and
  reconnects with ``?after=<newest id seen>``;
- frames split into ``chunk`` frames are joined back;
- after every hello it re-sends the messages it has not seen acknowledged (the
  server deduplicates by ``client_id``); a send answered ``unavailable`` stays
  pending and is sent again 2 s later;
- a frame whose ``seq`` skips ahead is held for up to 300 ms (publishes of two
  processes cross); only a gap that persists is filled with ``history.fetch``
  (once per hole per socket, at most 100 rows at a time);
- a ``truncated`` hello is paged forward with ``history.fetch`` ``after``;
- a missing ``assistant.delta`` is repaired with ``assistant.fetch``;
- a ``presence`` frame older (by ``version``) than the one shown is ignored.

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
HOLD_SECONDS = 0.3
RESEND_SECONDS = 2.0
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
        # reply id -> {"text", "seq", "known", "waiting": {seq: text}, "fetching"}
        self.streams: dict[int, dict[str, Any]] = {}
        self.presence: list[str] = []
        self.presence_version = -1
        self._presence_waiting: dict[int, dict[str, Any]] = {}
        self._presence_timer: asyncio.Future[None] | None = None
        self.sent: list[tuple[int, float, dict[str, Any]]] = []  # (socket number, time, frame) we sent
        # Every state a streaming reply's text went through: (reply id, seq, text).
        self.stream_states: list[tuple[int, int, str]] = []
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
        self._history_kinds: list[str] = []
        self._held: list[dict[str, Any]] | None = None
        self._held_timer: asyncio.TimerHandle | None = None
        self._paging = False
        self._chunks: dict[str, dict[str, Any]] = {}
        self._resend: asyncio.TimerHandle | None = None
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
            url = f"{self.ws_url}/ws/rooms/{self.slug}/?presence=delta"
            after = self.last_id or None
            if after:
                url += f"&after={after}"
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
            self._history_kinds = []
            self._paging = False
            self._chunks = {}
            for stream in self.streams.values():
                stream["fetching"] = False
            await self._read(self._ws, after)
            await self._held_release(fetch=False)
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
                if frame.get("type") == "chunk":
                    frame = self._chunk_add(frame)
                    if frame is None:
                        continue
                self.frames.append((self.socket_no, time.monotonic(), frame))
                await self._arrive(ws, frame, after)
                self._changed.set()
        except websockets.ConnectionClosed:
            pass

    def _chunk_add(self, frame: dict[str, Any]) -> dict[str, Any] | None:
        entry = self._chunks.setdefault(str(frame["id"]), {"count": frame["count"], "parts": {}})
        entry["parts"][frame["index"]] = frame["data"]
        if len(entry["parts"]) < entry["count"]:
            return None
        del self._chunks[str(frame["id"])]
        return json.loads("".join(entry["parts"][i] for i in range(entry["count"])))

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
        self.sent.append((self.socket_no, time.monotonic(), payload))
        return True

    def sent_of(self, kind: str) -> list[dict[str, Any]]:
        return [frame for _, _, frame in self.sent if frame.get("type") == kind]

    async def _send_pending(self, client_id: str) -> None:
        item = self.sends[client_id]
        if await self.send_frame({"type": "message.send", "text": item.text, "client_id": client_id}):
            item.sent_at.append(time.monotonic())
            self.inflight.append(client_id)

    # --- frames ------------------------------------------------------------------

    def _seq_of(self, frame: dict[str, Any]) -> int | None:
        if frame.get("type") not in ("message", "assistant.start"):
            return None
        message = frame["message"]
        return message["seq"] if message["id"] not in self.view else None

    def _skips_ahead(self, frame: dict[str, Any]) -> bool:
        # After a hello, last_seq 0 means the room was empty: seq 1 comes next.
        seq = self._seq_of(frame)
        return seq is not None and (self.last_seq > 0 or self.from_start) and seq > self.last_seq + 1

    def _fills_gap(self, frame: dict[str, Any]) -> bool:
        seq = self._seq_of(frame)
        return seq is not None and seq <= self.last_seq + 1

    async def _arrive(self, ws: ClientConnection, frame: dict[str, Any], after: int | None) -> None:
        """Like sync.js's frame(): hold what skips ahead, briefly."""
        if frame.get("type") == "hello":
            await self._handle(ws, frame, after)
            return
        if self._held is not None:
            self._held.append(frame)
            if self._fills_gap(frame):
                await self._held_drain(ws, after)
            return
        if self._skips_ahead(frame):
            self._held = [frame]
            loop = asyncio.get_running_loop()
            self._held_timer = loop.call_later(
                HOLD_SECONDS, lambda: asyncio.ensure_future(self._held_release(fetch=True))
            )
            return
        await self._handle(ws, frame, after)

    async def _held_drain(self, ws: ClientConnection, after: int | None) -> None:
        held, self._held = self._held or [], None
        if self._held_timer is not None:
            self._held_timer.cancel()
        fillers = [f for f in held if self._fills_gap(f)]
        for frame in fillers:
            await self._handle(ws, frame, after)
        for frame in held:
            if not any(frame is f for f in fillers):
                await self._arrive(ws, frame, after)

    async def _held_release(self, fetch: bool) -> None:
        held, self._held = self._held, None
        if held is None:
            return
        if self._held_timer is not None:
            self._held_timer.cancel()
        for frame in held:
            await self._handle(self._ws, frame, None)  # type: ignore[arg-type]
        if fetch:
            await self._holes_fill()
        self._changed.set()

    async def _handle(self, ws: ClientConnection, frame: dict[str, Any], after: int | None) -> None:
        kind = frame.get("type")
        if kind == "hello":
            self.live = True
            self._attempt = 0
            self.hellos.append((time.monotonic(), after))
            self.presence_version = -1
            self._presence(frame["presence"], frame.get("presence_version"))
            for message in frame["messages"]:
                self._upsert(message)
            for stream in frame["streaming"]:
                self._stream_resume(stream)
            if frame.get("truncated"):
                self._paging = True
                await self._forward_fetch()
            else:
                await self._holes_fill()
            for client_id in list(self.pending):
                await self._send_pending(client_id)
        elif kind == "message":
            message = frame["message"]
            self._upsert(message)
            if message.get("client_id") in self.sends and message["client_id"] in self.inflight:
                self._acknowledge(message["client_id"], frame)
        elif kind == "error":
            self.errors.append(frame)
            client_id = frame.get("client_id")
            if client_id in self.inflight:
                if frame["code"] == "unavailable":
                    # Not saved through no fault of the message: an answer, but it
                    # stays pending and is sent again soon.
                    item = self.sends[client_id]
                    if item.answered_at is None:
                        item.answered_at, item.answer = time.monotonic(), frame
                    self.inflight.remove(client_id)
                    self._resend_soon()
                else:
                    self._acknowledge(client_id, frame)
        elif kind == "history":
            history_kind = self._history_kinds.pop(0) if self._history_kinds else "gap"
            for message in frame["messages"]:
                self._upsert(message)
            if history_kind == "forward":
                if frame["has_more"] and frame["messages"]:
                    await self._forward_fetch()
                    return
                self._paging = False
            await self._holes_fill()
        elif kind == "presence":
            self._presence(frame["users"], frame.get("version"))
        elif kind == "presence.delta":
            await self._presence_delta(frame)
        elif kind == "assistant.start":
            self.streams.setdefault(frame["reply_id"], self._stream_new("", 0, True))
            self._upsert(frame["message"])
        elif kind == "assistant.delta":
            await self._delta(frame)
        elif kind == "assistant.snapshot":
            await self._snapshot(frame)
        elif kind == "assistant.end":
            self.streams.pop(frame["reply_id"], None)
            self._upsert(frame["message"])

    def _presence(self, users: list[str], version: int | None) -> None:
        if version is not None:
            if version <= self.presence_version:
                return
            self.presence_version = version
        me = self.name.split("@")[0]
        self.presence = sorted({*users, me})
        self._presence_apply()

    async def _presence_delta(self, frame: dict[str, Any]) -> None:
        """Like sync.js: apply deltas in version order; a gap that lasts a
        second is closed with presence.fetch."""
        if frame["version"] <= self.presence_version:
            return
        self._presence_waiting[frame["since"]] = frame
        self._presence_apply()
        if self._presence_waiting and self._presence_timer is None:

            async def fetch() -> None:
                await asyncio.sleep(1.0)
                self._presence_timer = None
                if self._presence_waiting:
                    await self.send_frame({"type": "presence.fetch"})

            self._presence_timer = asyncio.ensure_future(fetch())

    def _presence_apply(self) -> None:
        users = set(self.presence)
        while self.presence_version in self._presence_waiting:
            delta = self._presence_waiting.pop(self.presence_version)
            users |= set(delta["joined"])
            users -= set(delta["left"])
            self.presence_version = delta["version"]
        for since in [v for v in self._presence_waiting if v < self.presence_version]:
            del self._presence_waiting[since]
        self.presence = sorted(users)

    @staticmethod
    def _stream_new(text: str, seq: int, known: bool) -> dict[str, Any]:
        return {"text": text, "seq": seq, "known": known, "waiting": {}, "fetching": False}

    async def _delta(self, frame: dict[str, Any]) -> None:
        reply_id = frame["reply_id"]
        stream = self.streams.get(reply_id)
        if stream is None:
            known = self.view.get(reply_id)
            if known is not None and known["status"] != "streaming":
                return
            stream = self.streams[reply_id] = self._stream_new("", 0, False)
        if frame["seq"] <= stream["seq"]:
            return
        stream["waiting"][frame["seq"]] = frame["text"]
        if not stream["known"] or frame["seq"] > stream["seq"] + 1:
            await self._snapshot_fetch(reply_id)
            return
        await self._stream_advance(reply_id)

    async def _stream_advance(self, reply_id: int) -> None:
        stream = self.streams.get(reply_id)
        if stream is None or not stream["known"]:
            return
        for seq in sorted(stream["waiting"]):
            if seq <= stream["seq"]:
                del stream["waiting"][seq]
            elif seq == stream["seq"] + 1:
                stream["text"] += stream["waiting"].pop(seq)
                stream["seq"] = seq
                self.stream_states.append((reply_id, seq, stream["text"]))
            else:
                break
        if stream["waiting"]:
            await self._snapshot_fetch(reply_id)

    async def _snapshot_fetch(self, reply_id: int) -> None:
        stream = self.streams.get(reply_id)
        if stream is None or stream["fetching"]:
            return
        if await self.send_frame({"type": "assistant.fetch", "reply_id": reply_id}):
            stream["fetching"] = True

    async def _snapshot(self, frame: dict[str, Any]) -> None:
        reply_id = frame["reply_id"]
        if "message" in frame:
            self.streams.pop(reply_id, None)
            self._upsert(frame["message"])
            return
        stream = self.streams.get(reply_id)
        if stream is None:
            return
        stream["fetching"] = False
        entry = frame["streaming"]
        if not stream["known"] or entry["seq"] >= stream["seq"]:
            stream.update(text=entry["text"], seq=entry["seq"], known=True)
            self.stream_states.append((reply_id, entry["seq"], entry["text"]))
            if reply_id not in self.view:
                self._stream_resume(entry)
        waiting_first = min(stream["waiting"]) if stream["waiting"] else None
        await self._stream_advance(reply_id)
        if waiting_first is not None and waiting_first > stream["seq"] + 1:
            # The saved text is behind what was broadcast: ask again shortly.
            stream["fetching"] = True
            await asyncio.sleep(1.0)
            stream["fetching"] = False
            await self._snapshot_fetch(reply_id)

    def _resend_soon(self) -> None:
        if self._resend is not None:
            return

        async def resend() -> None:
            self._resend = None
            for client_id in list(self.pending):
                if client_id not in self.inflight:
                    await self._send_pending(client_id)

        self._resend = asyncio.get_running_loop().call_later(RESEND_SECONDS, lambda: asyncio.ensure_future(resend()))

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
        local = self.streams.get(stream["reply_id"])
        if local is None or not local["known"] or local["seq"] < stream["seq"]:
            fresh = self._stream_new(stream["text"], stream["seq"], True)
            if local is not None:
                fresh["waiting"] = local["waiting"]
            self.streams[stream["reply_id"]] = fresh
        self.last_id = max(self.last_id, stream["reply_id"])
        known = self.view.get(stream["reply_id"])
        if known is None:
            self.view[stream["reply_id"]] = {
                "id": stream["reply_id"],
                "seq": stream.get("message_seq"),
                "status": "streaming",
                "role": "assistant",
                "text": stream["text"],
            }
            if stream.get("message_seq") is not None:
                self.last_seq = max(self.last_seq, stream["message_seq"])

    async def _forward_fetch(self) -> None:
        if await self.send_frame({"type": "history.fetch", "after": self.last_id, "limit": HISTORY_MAX}):
            self._history_kinds.append("forward")
        else:
            self._paging = False

    async def _holes_fill(self) -> None:
        if self._paging:
            return
        rows = sorted((m for m in self.view.values() if m["seq"] is not None), key=lambda m: m["seq"])
        previous = 0 if self.from_start else (rows[0]["seq"] if rows else 0)
        for row in rows:
            gap = row["seq"] - previous - 1
            if gap > 0 and row["id"] not in self._holes_asked:
                self._holes_asked.add(row["id"])
                if await self.send_frame(
                    {"type": "history.fetch", "before": row["id"], "limit": min(gap, HISTORY_MAX)}
                ):
                    self._history_kinds.append("gap")
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
