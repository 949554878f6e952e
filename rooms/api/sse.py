"""``GET /api/v1/rooms/<slug>/events``: the room's events as Server-Sent Events,
resumable from any event's id.

Every frame is the WebSocket's own (``rooms.events``), sent as ``event: <type>``
/ ``data: <the same JSON>``. Events that move the room's state forward carry an
``id:``, a cursor from which a reconnect (``Last-Event-ID``, or ``?after=``)
gets every event it missed exactly once, in order:

    <seq>e<edited>[r<reply>:<delta seq>]...      e.g. 57e1764370000123456r130:4

- ``seq``: every row up to this room ``seq`` was delivered (``message`` for
  people's messages, ``assistant.start`` — or ``assistant.end`` if it had
  already ended — for replies);
- ``edited``: every ``message.update`` up to this time (microseconds since the
  epoch; edits of a room are serialised by its row lock, so they commit in
  time order) was delivered;
- ``r<reply>:<n>``: replies started but not ended, with the last delta seq
  delivered.

A resume replays from the database: for each open reply, ``assistant.end`` if
it ended meanwhile, else ``assistant.snapshot`` if it moved on (its text so far
and the delta seq it ends with; live deltas continue it); then edits made
since, as ``message.update`` with the row's current state, in the order they
happened; then the rows after ``seq``, in order. Then ``ready``, then live.

Like the socket, the stream joins the room's group *before* reading the
database, and drops live events that the read already covered. Unlike a
socket's client, an SSE client cannot repair holes itself, so the stream
does: rows are delivered in ``seq`` order and deltas in delta order; an event
that arrives early (publishes from two processes cross) waits up to
``HOLD_SECONDS`` for the one before it, and a gap that persists (the channel
layer delivers at most once) is filled from the database. Every heartbeat the
room's newest seq and streaming replies are compared too, so a lost *last*
event is found within one heartbeat.

Live only (never replayed): ``presence``, ``typing``, ``assistant.queued``,
``notify`` and private replies (catch-ups).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings

from .. import events
from ..access import AccessLost, access_check_fresh
from ..db import DatabaseUnavailable, db_run
from ..models import Message, Room
from ..realtime import hub, layer_health, room_group, user_group
from ..selectors import room_sync_state
from ..tasks import tasks
from . import selectors
from .selectors import micros

logger = logging.getLogger(__name__)

# How long an event that arrived ahead of its predecessor waits for it before
# the gap is filled from the database (the browser holds frames 300 ms too).
HOLD_SECONDS = 0.3
REPLAY_PAGE = 500
RETRY_MS = 2000
MAX_OPEN_IN_CURSOR = 200
_CURSOR = re.compile(r"^(\d{1,19})(?:e(\d{1,19})((?:r\d{1,19}:\d{1,10})*))?$")
_OPEN = re.compile(r"r(\d{1,19}):(\d{1,10})")
SYNC = "_sync"  # a feed's periodic look at the room (never sent)


# --- The cursor ---------------------------------------------------------------------


@dataclass
class Cursor:
    seq: int
    edited: int = 0
    open: dict[int, int] = field(default_factory=dict)
    exact: bool = True  # made by the server; False: a bare seq a client gave

    def format(self) -> str:
        tail = "".join(f"r{reply}:{delta}" for reply, delta in sorted(self.open.items()))
        return f"{self.seq}e{self.edited}{tail}"

    @classmethod
    def parse(cls, raw: str) -> Cursor | None:
        match = _CURSOR.match(raw.strip())
        if match is None:
            return None
        seq = int(match.group(1))
        if match.group(2) is None:
            return cls(seq=seq, exact=False)
        opened = {int(r): int(d) for r, d in _OPEN.findall(match.group(3) or "")}
        if len(opened) > MAX_OPEN_IN_CURSOR or seq >= 2**63 or any(r >= 2**63 for r in opened):
            return None
        return cls(seq=seq, edited=int(match.group(2)), open=opened)


# --- Live events, parsed once per process ------------------------------------------


@dataclass(slots=True)
class Live:
    kind: str
    frame: str = ""
    row_seq: int | None = None  # the row's room seq (message, start, end, update; sync: the room's last seq)
    reply_id: int | None = None
    dseq: int = 0
    edited: int = 0
    message_id: int = 0
    username: str = ""
    private: bool = False
    streaming: tuple[int, ...] = ()  # sync: the replies streaming


def _edited_micros(value: object) -> int:
    if not isinstance(value, str):
        return 0
    try:
        return micros(datetime.fromisoformat(value))
    except ValueError:
        return 0


def live_parse(envelope: dict[str, Any]) -> Live | None:
    kind, frame = envelope.get("kind"), envelope.get("frame")
    if not isinstance(kind, str) or not isinstance(frame, str):
        return None
    if kind == events.ASSISTANT_DELTA:
        return Live(
            kind,
            frame,
            reply_id=envelope.get("reply_id"),
            dseq=int(envelope.get("seq") or 0),
            private="room_id" in envelope,
        )
    if kind == events.TYPING:
        return Live(kind, frame, username=str(envelope.get("username", "")))
    if kind in (events.MESSAGE, events.MESSAGE_UPDATE, events.ASSISTANT_START, events.ASSISTANT_END):
        try:
            data = json.loads(frame)
        except ValueError:
            return None
        message = data.get("message") or {}
        return Live(
            kind,
            frame,
            row_seq=message.get("seq"),
            reply_id=data.get("reply_id"),
            edited=_edited_micros(message.get("edited")),
            message_id=int(message.get("id") or 0),
            private=bool(data.get("private") or message.get("private")),
        )
    return Live(kind, frame)  # presence (whole lists), assistant.queued, ...: passed on as they are


class RoomFeed:
    """One GroupHub member per room per process for all of its event streams:
    each room event is parsed once here, then handed to every stream."""

    def __init__(self, room_id: int) -> None:
        self.room_id = room_id
        self.group = room_group(room_id)
        self.sessions: set[Session] = set()
        self.sync_task: asyncio.Task[None] | None = None

    async def group_deliver(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == events.ROOM_EVENT:
            live = live_parse(message)
            if live is not None:
                for session in list(self.sessions):
                    session.push(live)
        elif kind in (events.ROOM_ACCESS, events.ROOM_DELETED) and message.get("room_id") == self.room_id:
            for session in list(self.sessions):
                session.room_control(message)

    async def sync_loop(self) -> None:
        """Every heartbeat, the room's newest seq and streaming replies, for the
        streams to notice a lost last event (one query per room and process)."""
        while True:
            await asyncio.sleep(settings.API_SSE_HEARTBEAT_SECONDS)
            if not self.sessions:
                continue
            try:
                last_seq, streaming = await db_run(room_sync_state, Room(pk=self.room_id))
            except Exception as exc:  # noqa: BLE001 - the next beat looks again
                logger.debug("event stream sync of room %s skipped: %s", self.room_id, type(exc).__name__)
                continue
            live = Live(SYNC, row_seq=last_seq, streaming=tuple(streaming))
            for session in list(self.sessions):
                session.push(live)


_feeds: dict[int, RoomFeed] = {}
_per_user: dict[int, int] = {}


def _reset() -> None:
    _feeds.clear()
    _per_user.clear()


tasks.on_new_loop(_reset)


async def _feed_join(room_id: int, session: Session) -> None:
    tasks.bind()
    feed = _feeds.get(room_id)
    if feed is None:
        feed = _feeds[room_id] = RoomFeed(room_id)
    feed.sessions.add(session)
    if feed.sync_task is None or feed.sync_task.done():
        feed.sync_task = tasks.spawn(feed.sync_loop(), name=f"sse-sync-{room_id}")
    await hub.join(feed.group, feed)


def _feed_leave(room_id: int, session: Session) -> None:
    feed = _feeds.get(room_id)
    if feed is None:
        return
    feed.sessions.discard(session)
    if not feed.sessions:
        del _feeds[room_id]
        if feed.sync_task is not None:
            feed.sync_task.cancel()
        tasks.spawn(hub.leave(feed.group, feed), name="sse-feed-leave")


def streams_open(user_id: int) -> int:
    return _per_user.get(user_id, 0)


# --- One stream -------------------------------------------------------------------------


class Ended(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


_WAKE = Live("_wake")


class Session:
    """One client's stream: its cursor, what waits for an earlier event, and the
    queue its room's feed and its user group fill."""

    def __init__(
        self,
        room: Room,
        user: Any,
        *,
        bot: bool,
        token_id: int | None,
        session_key: str | None,
        cursor: Cursor | None,
    ) -> None:
        self.room = room
        self.user = user
        self.user_id = user.pk
        self.username = user.get_username()
        self.bot = bot
        self.token_id = token_id
        self.session_key = session_key
        self.requested = cursor
        self.cursor = Cursor(seq=0)
        self.queue: asyncio.Queue[Live] = asyncio.Queue()
        self.ended: Ended | None = None
        self.joined: list[tuple[str, Any]] = []
        self.counted = False  # in _per_user
        # Early arrivals, by the seq or delta seq they wait for.
        self.held_rows: dict[int, Live] = {}
        self.after_row: dict[int, list[Live]] = {}
        self.held_deltas: dict[int, dict[int, Live]] = {}
        self.gap_since: float | None = None
        self.closed: set[int] = set()  # replies whose end was delivered (or replayed)
        self.suspect: set[int] = set()  # open replies to look up at the next repair
        # message id -> edited (µs) of the state delivered; before any, the floor.
        self.seen_edited: dict[int, int] = {}
        self.edited_floor = 0
        self.replayed = 0
        # A session cookie's expiry (time.time()): checked again then, as a socket does.
        self.expires: float | None = None

    # --- wiring -----------------------------------------------------------------------

    async def join(self) -> None:
        """Hear the room (and this user's group) before anything is read."""
        await _feed_join(self.room.pk, self)
        self.joined.append(("feed", None))
        group = user_group(self.user_id)
        await hub.join(group, self)
        self.joined.append((group, self))
        layer_health.register(self)
        _per_user[self.user_id] = _per_user.get(self.user_id, 0) + 1
        self.counted = True

    def leave(self) -> None:
        layer_health.unregister(self)
        for group, receiver in self.joined:
            if group == "feed":
                _feed_leave(self.room.pk, self)
            else:
                tasks.spawn(hub.leave(group, receiver), name="sse-leave")
        if self.counted:
            self.counted = False
            left = _per_user.get(self.user_id, 1) - 1
            if left > 0:
                _per_user[self.user_id] = left
            else:
                _per_user.pop(self.user_id, None)
        self.joined = []

    def push(self, live: Live) -> None:
        if self.ended is not None:
            return
        if self.queue.qsize() >= settings.API_SSE_BACKLOG_MAX:
            self.end(events.UNAVAILABLE, "this stream fell too far behind; reconnect with Last-Event-ID")
            return
        self.queue.put_nowait(live)

    def end(self, code: str, detail: str) -> None:
        if self.ended is None:
            self.ended = Ended(code, detail)
            self.queue.put_nowait(_WAKE)

    async def close_for_outage(self) -> None:
        self.end(events.UNAVAILABLE, "the server lost its channel layer; reconnect with Last-Event-ID")

    def room_control(self, message: dict[str, Any]) -> None:
        if message.get("type") == events.ROOM_DELETED:
            self.end(events.NOT_FOUND, "the room was deleted")
        elif message.get("private") and self.user_id not in message.get("members", ()):
            self.end(events.FORBIDDEN, "you no longer have access to this room")

    async def group_deliver(self, message: dict[str, Any]) -> None:
        """This user's group: notifications, private replies, access changes."""
        kind = message.get("type")
        if kind == events.ROOM_EVENT:
            if message.get("room_id") == self.room.pk:
                live = live_parse(message)
                if live is not None:
                    live.private = True
                    self.push(live)
        elif kind == events.USER_NOTIFY:
            self.push(Live(events.NOTIFY, str(message.get("frame", ""))))
        elif kind == events.API_TOKEN_REVOKED:
            if self.token_id is not None and message.get("token_id") == self.token_id:
                self.end("invalid_token", "the token was revoked")
        elif kind == events.USER_SESSION_END:
            if self.session_key and message.get("session_key") == self.session_key:
                self.end("unauthorized", "logged out")
        elif kind == events.USER_ACCESS or (kind == events.USER_REMOVED and message.get("room_id") == self.room.pk):
            tasks.spawn(self._access_recheck(), name="sse-access-recheck")

    async def session_recheck(self) -> None:
        """The session's expiry came: still logged in (it may have been extended)?"""
        from ..socketauth import session_user_resolve

        _, user, expires = await db_run(session_user_resolve, self.session_key)
        if not user.is_authenticated or user.pk != self.user_id:
            self.end("unauthorized", "the session expired")
        else:
            self.expires = expires.timestamp() if expires is not None else None

    async def _access_recheck(self) -> None:
        try:
            await db_run(access_check_fresh, self.room.pk, self.user)
        except AccessLost as exc:
            if exc.what == "user":
                self.end("unauthorized", "the account is deactivated")
            else:
                self.end(events.NOT_FOUND if exc.what == "gone" else events.FORBIDDEN, "you lost access to this room")
        except DatabaseUnavailable:
            pass  # every request checks again

    # --- output -------------------------------------------------------------------------

    def _event(self, kind: str, frame: str) -> str:
        """An event that moves the cursor: with its id."""
        return f"event: {kind}\nid: {self.cursor.format()}\ndata: {frame}\n\n"

    @staticmethod
    def _passing(kind: str, frame: str) -> str:
        """A live-only event: no id (the client's Last-Event-ID stays)."""
        return f"event: {kind}\ndata: {frame}\n\n"

    # --- opening: the replay ------------------------------------------------------------

    async def opening(self) -> list[str]:
        """The replay (or, fresh, the replies in flight), then ``ready``."""
        out: list[str] = []
        requested = self.requested
        if requested is None:
            start = await db_run(selectors.stream_start, self.room, self.user)
            self.cursor = Cursor(seq=start.last_seq, edited=start.edited)
            for reply in start.streaming:
                self.cursor.open[reply.pk] = reply.stream_seq
                out.append(self._event(events.ASSISTANT_SNAPSHOT, events.assistant_snapshot_frame(reply)))
        else:
            await db_run(access_check_fresh, self.room.pk, self.user)
            newest = await db_run(selectors.newest_edit, self.room)
            self.cursor = Cursor(seq=requested.seq, edited=requested.edited, open=dict(requested.open))
            if requested.exact:
                await self._replay_open(out)
                changed = await db_run(selectors.edits_since, self.room, requested.seq, requested.edited)
            else:
                await self._replay_late(out)
                changed = await db_run(selectors.edits_from_mark, self.room, requested.seq)
            for row in changed:
                self._update_out(row, out)
            self.cursor.edited = max(self.cursor.edited, newest)
            while True:
                rows = await db_run(selectors.rows_after, self.room, self.cursor.seq, REPLAY_PAGE)
                for row in rows:
                    self._row_out(row, out)
                if len(rows) < REPLAY_PAGE:
                    break
        self.edited_floor = self.cursor.edited
        self.replayed = len(out)
        frame = events.ready_frame(
            room_slug=self.room.slug,
            room_name=self.room.name,
            username=self.username,
            bot=self.bot,
            cursor=self.cursor.format(),
            last_seq=self.cursor.seq,
            resumed=requested is not None,
            replayed=self.replayed,
        )
        out.append(self._event(events.READY, frame))
        return out

    async def _replay_open(self, out: list[str]) -> None:
        """The replies the client had open: ended meanwhile, or moved on."""
        if not self.cursor.open:
            return
        rows = {r.pk: r for r in await db_run(selectors.replies_by_id, self.room, list(self.cursor.open))}
        for reply_id in sorted(self.cursor.open):
            row = rows.get(reply_id)
            if row is None or row.seq is None or row.seq > self.cursor.seq:
                self.cursor.open.pop(reply_id)  # not this room's, or from the future: its row comes in order
                continue
            self._reply_state_out(row, out)

    async def _replay_late(self, out: list[str]) -> None:
        """A bare seq: replies up to it that still stream or ended since it was written."""
        for row in await db_run(selectors.replies_late, self.room, self.cursor.seq):
            if row.status == Message.Status.STREAMING:
                self.cursor.open[row.pk] = row.stream_seq
                out.append(self._event(events.ASSISTANT_SNAPSHOT, events.assistant_snapshot_frame(row)))
            else:
                self.closed.add(row.pk)
                out.append(self._event(events.ASSISTANT_END, events.assistant_end_frame(row)))

    def _reply_state_out(self, row: Message, out: list[str]) -> None:
        """An open reply as the database has it now (replay and repair)."""
        delivered = self.cursor.open.get(row.pk, 0)
        if row.status != Message.Status.STREAMING:
            self.cursor.open.pop(row.pk, None)
            self.held_deltas.pop(row.pk, None)
            self.closed.add(row.pk)
            out.append(self._event(events.ASSISTANT_END, events.assistant_end_frame(row)))
        elif row.stream_seq > delivered:
            self.cursor.open[row.pk] = row.stream_seq
            out.append(self._event(events.ASSISTANT_SNAPSHOT, events.assistant_snapshot_frame(row)))
            self._deltas_drain(row.pk, out)

    def _row_out(self, row: Message, out: list[str]) -> None:
        """A row the client does not have, from the database (its current state)."""
        self.cursor.seq = row.seq
        if row.edited is not None:
            self.seen_edited[row.pk] = micros(row.edited)
        if row.role != Message.Role.ASSISTANT:
            out.append(self._event(events.MESSAGE, events.message_frame(row)))
        elif row.status == Message.Status.STREAMING:
            self.cursor.open[row.pk] = row.stream_seq
            out.append(self._event(events.ASSISTANT_START, events.assistant_start_frame(row)))
            if row.stream_seq:
                out.append(self._event(events.ASSISTANT_SNAPSHOT, events.assistant_snapshot_frame(row)))
            self._deltas_drain(row.pk, out)
        else:
            self.closed.add(row.pk)
            self.held_deltas.pop(row.pk, None)
            out.append(self._event(events.ASSISTANT_END, events.assistant_end_frame(row)))
        self._after_row_out(row.seq, out)

    def _update_out(self, row: Message, out: list[str]) -> None:
        stamp = micros(row.edited)
        self.seen_edited[row.pk] = stamp
        self.cursor.edited = max(self.cursor.edited, stamp)
        out.append(self._event(events.MESSAGE_UPDATE, events.message_update_frame(row)))

    # --- live -----------------------------------------------------------------------------

    def handle(self, live: Live, out: list[str]) -> None:
        kind = live.kind
        if kind == SYNC:
            self._sync(live)
        elif live.private:
            out.append(self._passing(kind, live.frame))
        elif kind in (events.MESSAGE, events.ASSISTANT_START):
            self._row_live(live, out)
        elif kind == events.ASSISTANT_DELTA:
            self._delta_live(live, out)
        elif kind == events.ASSISTANT_END:
            self._end_live(live, out)
        elif kind == events.MESSAGE_UPDATE:
            self._update_live(live, out)
        elif kind == events.TYPING:
            if live.username != self.username:
                out.append(self._passing(kind, live.frame))
        elif live.frame:
            out.append(self._passing(kind, live.frame))

    def _gap(self) -> None:
        if self.gap_since is None:
            self.gap_since = time.monotonic()

    def _row_live(self, live: Live, out: list[str]) -> None:
        seq = live.row_seq
        if seq is None or seq <= self.cursor.seq:
            return  # in the replay already, or a copy
        if seq > self.cursor.seq + 1:
            self.held_rows[seq] = live
            self._gap()
            return
        self.cursor.seq = seq
        if live.kind == events.ASSISTANT_START and live.reply_id is not None:
            self.cursor.open[live.reply_id] = 0
            out.append(self._event(live.kind, live.frame))
            self._deltas_drain(live.reply_id, out)
        else:
            self.seen_edited.pop(live.message_id, None)
            out.append(self._event(live.kind, live.frame))
        self._after_row_out(seq, out)
        following = self.held_rows.pop(self.cursor.seq + 1, None)
        if following is not None:
            self._row_live(following, out)

    def _after_row_out(self, seq: int, out: list[str]) -> None:
        for waiting in self.after_row.pop(seq, ()):
            self.handle(waiting, out)

    def _delta_live(self, live: Live, out: list[str]) -> None:
        reply_id = live.reply_id
        if reply_id is None or reply_id in self.closed:
            return
        delivered = self.cursor.open.get(reply_id)
        if delivered is not None and live.dseq <= delivered:
            return
        self.held_deltas.setdefault(reply_id, {})[live.dseq] = live
        if delivered is None or live.dseq > delivered + 1:
            self.suspect.add(reply_id)
            self._gap()  # its start, or a delta before it, is still to come
            return
        self._deltas_drain(reply_id, out)

    def _deltas_drain(self, reply_id: int, out: list[str]) -> None:
        held = self.held_deltas.get(reply_id)
        if not held:
            return
        delivered = self.cursor.open.get(reply_id)
        if delivered is None:
            return
        for stale in [d for d in held if d <= delivered]:
            del held[stale]
        while delivered + 1 in held:
            live = held.pop(delivered + 1)
            delivered += 1
            self.cursor.open[reply_id] = delivered
            out.append(self._event(live.kind, live.frame))
        if not held:
            del self.held_deltas[reply_id]

    def _end_live(self, live: Live, out: list[str]) -> None:
        reply_id = live.reply_id
        if reply_id is None or reply_id in self.closed:
            return
        if reply_id not in self.cursor.open:
            if live.row_seq is not None and live.row_seq > self.cursor.seq:
                self.after_row.setdefault(live.row_seq, []).append(live)  # after its start
                self._gap()
            # Else its row is older than this stream's start and already final there.
            return
        self.cursor.open.pop(reply_id, None)
        self.held_deltas.pop(reply_id, None)
        self.closed.add(reply_id)
        out.append(self._event(live.kind, live.frame))

    def _update_live(self, live: Live, out: list[str]) -> None:
        if live.row_seq is None:
            return
        if live.row_seq > self.cursor.seq:
            self.after_row.setdefault(live.row_seq, []).append(live)  # after the row itself
            self._gap()
            return
        if live.edited <= self.seen_edited.get(live.message_id, self.edited_floor):
            return  # the state delivered is this one or newer
        self.seen_edited[live.message_id] = live.edited
        self.cursor.edited = max(self.cursor.edited, live.edited)
        out.append(self._event(live.kind, live.frame))

    def _sync(self, live: Live) -> None:
        """The room's newest seq and streaming replies, as read every heartbeat."""
        behind = live.row_seq is not None and live.row_seq > self.cursor.seq
        lost = [reply_id for reply_id in self.cursor.open if reply_id not in live.streaming]
        self.suspect.update(lost)
        if behind or lost:
            self._gap()

    def gap_due(self) -> float | None:
        return None if self.gap_since is None else self.gap_since + HOLD_SECONDS

    async def repair(self, out: list[str]) -> None:
        """Fill what is still missing from the database: rows before the held
        ones (or after the cursor), and replies whose deltas or end went missing."""
        self.gap_since = None
        waiting = [*self.held_rows, *self.after_row]
        newest = await db_run(selectors.room_last_seq, self.room.pk)
        upto = max([newest, *waiting])
        if upto > self.cursor.seq:
            for row in await db_run(selectors.rows_between, self.room, self.cursor.seq, upto):
                if row.seq != self.cursor.seq + 1:
                    break
                self.held_rows.pop(row.seq, None)
                self._row_out(row, out)
            following = self.held_rows.pop(self.cursor.seq + 1, None)
            if following is not None:
                self._row_live(following, out)
        suspects, self.suspect = self.suspect, set()
        for reply_id in sorted({*suspects, *self.held_deltas}):
            if reply_id in self.closed:
                self.held_deltas.pop(reply_id, None)
                continue
            row = await db_run(selectors.reply_state, self.room.pk, reply_id)
            if row is None or row.seq is None or row.seq > self.cursor.seq:
                if row is None:
                    self.held_deltas.pop(reply_id, None)
                    self.cursor.open.pop(reply_id, None)
                continue
            if reply_id not in self.cursor.open:
                if row.status != Message.Status.STREAMING:
                    self.closed.add(reply_id)
                self.held_deltas.pop(reply_id, None)
                continue
            self._reply_state_out(row, out)
            if reply_id in self.held_deltas:
                self.suspect.add(reply_id)
        if self.held_rows or self.after_row or self.held_deltas:
            # Still waiting (the database can be behind what was broadcast while it was away).
            self._gap()


RESPONSE_HEADERS = [
    ("Content-Type", "text/event-stream"),
    ("Cache-Control", "no-cache"),
    # nginx: pass each event on as it comes (deploy/nginx also turns buffering off here).
    ("X-Accel-Buffering", "no"),
    ("X-Content-Type-Options", "nosniff"),
]


async def session_open(
    caller: Any, room: Room, raw_cursor: str, session_key: str | None, expires: datetime | None = None
) -> Session:
    """A stream for ``caller`` in ``room`` from ``raw_cursor`` (an event id, a
    room seq, or "" for now), or the ``ApiError`` that refuses it."""
    from .http import ApiError

    cursor = None
    if raw_cursor:
        cursor = Cursor.parse(raw_cursor[:8192])
        if cursor is None:
            raise ApiError(400, events.BAD_REQUEST, "Last-Event-ID (or after) is not an event id of this stream")
        if cursor.seq > await db_run(selectors.room_last_seq, room.pk):
            raise ApiError(400, events.BAD_REQUEST, "that event id is ahead of this room (an id from another room?)")
    if not layer_health.healthy:
        raise ApiError(503, events.UNAVAILABLE, "the server cannot reach Redis right now", {"Retry-After": "2"})
    cap = settings.API_SSE_MAX_PER_USER
    if cap and streams_open(caller.user.pk) >= cap:
        raise ApiError(
            429,
            events.RATE_LIMITED,
            f"at most {settings.API_SSE_MAX_PER_USER} event streams per user and server process",
            {"Retry-After": "5"},
        )
    session = Session(
        room,
        caller.user,
        bot=caller.is_bot,
        token_id=caller.token.pk if caller.token is not None else None,
        session_key=session_key,
        cursor=cursor,
    )
    if session_key is not None and expires is not None:
        session.expires = expires.timestamp()
    return session


def _format_error(code: str, detail: str) -> str:
    return f"event: {events.ERROR}\ndata: {events.error_frame(code, detail)}\n\n"


async def stream(session: Session) -> AsyncIterator[str]:
    """The response body: replay, ``ready``, then live events and heartbeats,
    until the client goes away (the server cancels this) or the stream must end."""
    heartbeat = settings.API_SSE_HEARTBEAT_SECONDS
    yield f"retry: {RETRY_MS}\n\n"
    try:
        try:
            await session.join()
            opening = await session.opening()
        except (DatabaseUnavailable, AccessLost) as exc:
            code = events.UNAVAILABLE if isinstance(exc, DatabaseUnavailable) else events.NOT_FOUND
            yield _format_error(code, "the stream could not start; reconnect shortly")
            return
        except Exception as exc:  # noqa: BLE001 - Redis away at join: the client retries
            logger.warning("event stream of room %s could not start: %s", session.room.pk, type(exc).__name__)
            yield _format_error(events.UNAVAILABLE, "the stream could not start; reconnect shortly")
            return
        yield "".join(opening)
        next_beat = time.monotonic() + heartbeat
        while True:
            due = session.gap_due()
            now = time.monotonic()
            wait = max(0.0, min(next_beat, due if due is not None else next_beat) - now)
            out: list[str] = []
            try:
                live = await asyncio.wait_for(session.queue.get(), wait)
            except TimeoutError:
                live = None
            if session.ended is not None:
                yield _format_error(session.ended.code, session.ended.detail)
                return
            if live is not None:
                session.handle(live, out)
                # Take what else is already waiting: one write for a burst.
                while not session.queue.empty() and len(out) < 256:
                    session.handle(session.queue.get_nowait(), out)
            due = session.gap_due()
            if due is not None and time.monotonic() >= due:
                try:
                    await session.repair(out)
                except DatabaseUnavailable:
                    session._gap()
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + heartbeat
                if session.expires is not None and time.time() >= session.expires:
                    try:
                        await session.session_recheck()
                    except DatabaseUnavailable:
                        pass
                if not out:
                    out.append(": keep-alive\n\n")
            if out:
                yield "".join(out)
            if session.ended is not None:
                yield _format_error(session.ended.code, session.ended.detail)
                return
    finally:
        session.leave()
