"""The room socket: parse, authorize, call a service, send.

Frames are documented in docs/protocol.md and built in ``rooms.events``.

Every way a frame handler can fail ends in an ``error`` frame or a close code
the client knows how to resume from, never in 1011: bad input is
``bad_request``, a database that is away is ``unavailable`` (``rooms.db``),
access lost since connect closes with 4401/4403/4404.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any
from urllib.parse import parse_qs

from autobahn.exception import Disconnected
from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from . import events, presence, selectors
from .access import AccessLost, access_check_fresh
from .admission import connect_gate
from .assistant import ask
from .assistant.cancel import reply_cancel
from .db import DatabaseUnavailable, db_run
from .models import Message, Room
from .presence import TooManySockets
from .ratelimit import rate_hit
from .realtime import group_publish, hub, layer_health, room_group, user_group
from .services import ServiceError, message_delete, message_edit, message_update_send, read_mark
from .socketauth import session_user_resolve, socket_refuse
from .tasks import tasks

logger = logging.getLogger(__name__)


TYPING_REPEAT_SECONDS = 2.0
# slug -> room id, learnt from earlier sockets of this process (checked again
# at every open, and forgotten when it no longer matches).
_room_ids: dict[str, int] = {}
# What a lost access closes a socket with.
ACCESS_CLOSE = {
    "user": events.CLOSE_NOT_AUTHENTICATED,
    "room": events.CLOSE_FORBIDDEN,
    "gone": events.CLOSE_NOT_FOUND,
}


class BadFrame(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _int_field(payload: dict[str, Any], name: str, *, required: bool = True, minimum: int | None = None) -> int | None:
    value = payload.get(name)
    if value is None and not required:
        return None
    # bool is an int in Python, never in this protocol.
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadFrame(events.BAD_REQUEST, f"{name} must be an integer")
    if minimum is not None and value < minimum:
        raise BadFrame(events.BAD_REQUEST, f"{name} must be at least {minimum}")
    if value > 2**63 - 1:
        raise BadFrame(events.BAD_REQUEST, f"{name} is out of range")
    return value


def _strings_clean(value: object, depth: int = 0) -> bool:
    """No NUL and no lone surrogate in any string of a parsed frame (keys too).

    JSON can smuggle both in as escapes (``\\u0000``, ``\\ud800``): PostgreSQL
    cannot store NUL, and a lone surrogate cannot even be encoded to echo back.
    """
    if isinstance(value, str):
        if "\x00" in value:
            return False
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if depth > 64:
        return True  # json.loads' own recursion limit bounds the rest
    if isinstance(value, dict):
        return all(_strings_clean(k, depth + 1) and _strings_clean(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return all(_strings_clean(v, depth + 1) for v in value)
    return True


class RoomConsumer(AsyncWebsocketConsumer):
    room: Room | None = None
    username: str = ""
    user_id: int = 0
    session_key: str | None = None
    closing: bool = False
    typing_state: bool | None = None
    typing_sent_at: float = 0.0
    typing_next: bool | None = None
    typing_timer: asyncio.TimerHandle | None = None
    session_timer: asyncio.TimerHandle | None = None
    torn_down: bool = False
    handling: bool = False
    close_deferred: int | None = None
    groups_joined: list[str] = []
    present: bool = False
    # Ids this socket was sent as its own message.send acks; their broadcast
    # copies are dropped. Created on a socket's first send: idle sockets are
    # most sockets, and each one's memory counts (bench S3).
    acked_ids: set[int] | None = None
    # client_ids whose send failed with the database's outcome unknown.
    unsure_ids: set[str] | None = None
    # The client takes presence as deltas (?presence=delta) rather than whole lists.
    presence_deltas: bool = False
    # What hello held, to drop the live copies of it (empty for most sockets).
    hello_max_id: int = 0
    hello_stream_seq: dict[int, int] = {}  # replaced per instance, never mutated
    hello_final_ids: frozenset[int] = frozenset()

    # --- Lifecycle ------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # While Redis is down, refuse new sockets before any work: 4503, retry.
        if not layer_health.healthy:
            await socket_refuse(receive, send, events.CLOSE_UNAVAILABLE)
            return
        # No channel of its own: the process's GroupHub delivers group messages.
        # So where channels' AsyncConsumer.__call__ runs a task per message
        # source and an asyncio.wait() per message, one plain loop does (about
        # 2 KiB less per idle socket).
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass
        finally:
            # A handler that raised ends the consumer without disconnect(): its
            # hub membership and presence entry must not outlive it.
            await self._teardown()

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' dispatch, minus its ``aclose_old_connections()`` before every
        frame: that is a hop onto the database thread per frame, which queues
        behind any stuck query (a frame handler would wait on a hanging
        database before it even started) and costs a thread hop even for
        frames that never touch the database. Connections are handed back
        after every ``db_run`` instead."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        self.room = None
        self.groups_joined = []
        self.socket_id = uuid.uuid4().hex
        # Group messages that arrive before hello is sent wait here.
        self.backlog: list[dict[str, Any]] | None = []
        async with connect_gate():
            await self._open()

    async def _open(self) -> None:
        """Authorize, join, read the snapshot, announce presence, send hello."""
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self._refuse(events.CLOSE_NOT_AUTHENTICATED)
            return
        self.user = user
        self.user_id = user.pk
        self.username = user.get_username()
        self.session_key = getattr(self.scope.get("session"), "session_key", None)
        slug = self.scope["url_route"]["kwargs"]["slug"]
        if not layer_health.healthy:
            await self._refuse(events.CLOSE_UNAVAILABLE)
            return
        after, after_error = self._after_param()
        self.presence_deltas = b"presence=delta" in self.scope.get("query_string", b"")
        try:
            # Join before reading the snapshot: anything committed after the read
            # arrives live, anything before is in the snapshot; overlap is dropped
            # by id. The room's id is known from earlier sockets (one lookup per
            # slug and process), so access and snapshot are one database hop; if
            # the slug now names another room, join that one and read again.
            room_id = _room_ids.get(slug) or await db_run(selectors.room_id_for, slug)
            opened = None
            for _ in range(2):
                if room_id is None:
                    break
                await self._groups_join([room_group(room_id), user_group(user.pk)])
                opened = await db_run(
                    selectors.room_open,
                    slug,
                    user,
                    after=after,
                    latest=settings.CHAT_HELLO_MESSAGES,
                    resume_max=settings.CHAT_RESUME_MAX,
                )
                if opened.room is None or opened.room.pk == room_id:
                    break
                room_id = opened.room.pk
        except DatabaseUnavailable:
            await self._refuse(events.CLOSE_UNAVAILABLE)
            return
        except Exception as exc:  # noqa: BLE001 - Redis down: tell the client to retry
            logger.warning("connect to %s failed: %s", slug, type(exc).__name__)
            await self._refuse(events.CLOSE_UNAVAILABLE)
            return
        room = opened.room if opened is not None else None
        if room is None or room.pk != room_id:
            _room_ids.pop(slug, None)
            # A private room the user may not see answers like one that does not exist.
            await self._refuse(events.CLOSE_NOT_FOUND)
            return
        _room_ids[slug] = room_id
        try:
            joined = await presence.presence_join(room.pk, user.pk, self.username, self.socket_id)
        except TooManySockets:
            await self._refuse(events.CLOSE_TOO_MANY)
            return
        except Exception as exc:  # noqa: BLE001 - Redis down: tell the client to retry
            logger.warning("connect to %s failed: %s", slug, type(exc).__name__)
            await self._refuse(events.CLOSE_UNAVAILABLE)
            return
        self.present = True
        self.room = room
        hello = self._hello_build(opened, after, joined)
        await self.accept()
        await self.send(text_data=hello)
        await self._backlog_flush()
        if after_error:
            await self._send_error(events.BAD_REQUEST, after_error)
        layer_health.register(self)
        ask.background_ensure()
        self._session_timer_start()

    async def _groups_join(self, groups: list[str]) -> None:
        """Be in exactly these groups (leaving any joined for another room)."""
        for group in [g for g in self.groups_joined if g not in groups]:
            self.groups_joined.remove(group)
            await hub.leave(group, self)
        for group in groups:
            if group not in self.groups_joined:
                self.groups_joined.append(group)
                await hub.join(group, self)

    def _after_param(self) -> tuple[int | None, str | None]:
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        raw = query.get("after", [None])[0]
        if raw is None or raw == "":
            return None, None
        try:
            value = int(raw)
        except ValueError:
            return None, "after must be a message id"
        if not 0 <= value < 2**63:
            return None, "after must be a message id"
        return value, None

    def _hello_build(self, opened: selectors.RoomOpen, after: int | None, joined: presence.Joined) -> str:
        room = opened.room
        assert room is not None
        messages, streaming = opened.messages, opened.streaming
        shown = [m for m in messages if m.status != Message.Status.STREAMING]
        frame, sent, cut = events.hello_frame(
            room_slug=room.slug,
            room_name=room.name,
            assistants=[{"name": a.name, "model": a.model or settings.ASSISTANT_MODEL} for a in opened.assistants],
            private=opened.private,
            username=self.username,
            presence=joined.users,
            presence_version=joined.version,
            last_read_seq=opened.last_read_seq,
            moderator=opened.moderator,
            messages=shown,
            streaming=streaming,
            truncated=opened.truncated,
            resume=after is not None,
            limit=settings.CHAT_MAX_SEND_FRAME_BYTES,
        )
        # Only what hello carries counts as seen: what a resume's bounded hello
        # left out (cut, newer than what it carries) arrives later through
        # history.fetch or live. Without ``after`` a cut drops the oldest rows.
        newest = max([m.id for m in sent] + [0])
        if cut and after is not None:
            self.hello_max_id = newest
        else:
            self.hello_max_id = max([newest] + [m.id for m in messages] + [r.id for r in streaming] + [after or 0])
        if streaming:
            self.hello_stream_seq = {r.id: r.stream_seq for r in streaming}
        final_ids = frozenset(m.id for m in sent if m.role == Message.Role.ASSISTANT)
        if final_ids:
            self.hello_final_ids = final_ids
        return frame

    async def _refuse(self, code: int) -> None:
        # Accept first: a close code only reaches the client on an open socket.
        await self.accept()
        await self.close(code=code)

    async def disconnect(self, code: int) -> None:
        await self._teardown()

    async def _teardown(self) -> None:
        if self.torn_down:
            return
        self.torn_down = True
        for timer in (self.typing_timer, self.session_timer):
            if timer is not None:
                timer.cancel()
        layer_health.unregister(self)
        for group in self.groups_joined:
            await hub.leave(group, self)
        if not self.present or self.room is None:
            return
        try:
            await presence.presence_leave(self.room.pk, self.user_id, self.username, self.socket_id)
        except Exception:  # noqa: BLE001 - the entry ages out by itself
            return

    async def close_for_outage(self) -> None:
        if self.handling:
            # Answer the frame in hand first (its broadcast is bounded by
            # BROADCAST_TIMEOUT): a send during an outage gets its message or an
            # error, never just a closed socket.
            self.close_deferred = events.CLOSE_UNAVAILABLE
            return
        await self.close(code=events.CLOSE_UNAVAILABLE)

    async def close(self, code: int | None = None, reason: str | None = None) -> None:
        if self.closing:
            return
        self.closing = True
        await super().close(code=code, reason=reason)

    async def send(self, text_data: str | None = None, bytes_data: bytes | None = None, close: bool = False) -> None:
        # Every frame of this protocol is JSON text (docs/protocol.md).
        if text_data is None or bytes_data is not None:
            raise TypeError("RoomConsumer sends text frames only")
        await self._frame_write(text_data)
        if close:
            await self.close()

    async def _frame_write(self, frame: str) -> None:
        """Write one text frame straight to the server's ``send``: a room event
        runs this once per socket in the room, so it does little else."""
        # A socket that is closing (we closed it for an outage or a logout, or the
        # peer went away while a frame was being handled) has no one to send to;
        # sending anyway raises inside daphne and kills the consumer mid-handler.
        if self.closing:
            return
        limit = settings.CHAT_MAX_SEND_FRAME_BYTES
        if len(frame) * 4 > limit:
            # Possibly over what the server may send (autobahn refuses it and
            # closes with 1011): rare, so checked exactly only here.
            chunks = events.frame_chunks(frame, limit)
            if chunks is not None:
                for chunk in chunks:
                    await self._raw_send(chunk)
                return
        await self._raw_send(frame)

    async def _raw_send(self, frame: str) -> None:
        if self.closing:
            return
        try:
            await self.base_send({"type": "websocket.send", "text": frame})
        except (Disconnected, OSError):
            # daphne raises autobahn's Disconnected; other ASGI servers an OSError.
            self.closing = True

    def _session_timer_start(self) -> None:
        """Close the socket when its session expires (checked again then: the
        session may have been extended meanwhile)."""
        expires = self.scope.get("session_expires")
        if expires is None:
            return
        delay = max(1.0, expires.timestamp() - time.time())
        if delay > 30 * 86400:
            return  # beyond any socket's life (daphne closes sockets after a day)
        loop = asyncio.get_running_loop()
        self.session_timer = loop.call_later(delay, lambda: tasks.spawn(self._access_recheck(), "session-expiry"))

    # --- Client frames -------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.room is None or self.closing:
            return
        if bytes_data is not None:
            if len(bytes_data) > settings.CHAT_MAX_FRAME_BYTES:
                await self.close(code=events.CLOSE_TOO_LARGE)
                return
            await self._send_error(events.BAD_REQUEST, "binary frames are not supported; send JSON text")
            return
        assert text_data is not None
        if len(text_data) > settings.CHAT_MAX_FRAME_BYTES or events.utf8_len(text_data) > settings.CHAT_MAX_FRAME_BYTES:
            await self.close(code=events.CLOSE_TOO_LARGE)
            return
        try:
            payload = json.loads(text_data)
        except (ValueError, RecursionError):
            await self._send_error(events.BAD_JSON, "frame is not valid JSON")
            return
        # An error that answers a message.send names its client_id, so a client
        # can tell which of its pending sends failed (echoed only if it is clean).
        client_id = payload.get("client_id") if isinstance(payload, dict) else None
        client_id = client_id if isinstance(client_id, str) and 0 < len(client_id) <= 64 else None
        if ("\\u" in text_data or "\x00" in text_data) and not _strings_clean(payload):
            if client_id is not None and not _strings_clean(client_id):
                client_id = None
            await self._send_error(events.BAD_REQUEST, "the frame contains NUL or invalid Unicode", client_id)
            return
        self.handling = True
        try:
            await self._dispatch(payload)
        except BadFrame as exc:
            await self._send_error(exc.code, exc.detail, client_id)
        except ServiceError as exc:
            await self._send_error(exc.code, exc.detail, client_id, exc.extra)
        except DatabaseUnavailable:
            await self._send_error(events.UNAVAILABLE, "the server cannot reach its database; try again", client_id)
        except AccessLost as exc:
            await self.close(code=ACCESS_CLOSE[exc.what])
        except Exception:
            kind = str(payload.get("type"))[:40] if isinstance(payload, dict) else ""
            logger.exception("handling a %s frame failed", kind)
            await self._send_error(events.INTERNAL, "something went wrong on our side", client_id)
        finally:
            self.handling = False
            if self.close_deferred is not None:
                await self.close(code=self.close_deferred)

    async def _dispatch(self, payload: object) -> None:
        if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
            raise BadFrame(events.BAD_REQUEST, 'frame must be a JSON object with a string "type"')
        kind = payload["type"]
        if kind == events.MESSAGE_SEND:
            await self._message_send(payload)
        elif kind == events.TYPING_SET:
            await self._typing(payload)
        elif kind == events.HISTORY_FETCH:
            await self._history_fetch(payload)
        elif kind == events.ASSISTANT_CANCEL:
            await self._assistant_cancel(payload)
        elif kind == events.ASSISTANT_FETCH:
            await self._assistant_fetch(payload)
        elif kind == events.ASSISTANT_REGENERATE:
            assert self.room is not None
            reply_id = _int_field(payload, "reply_id", minimum=1)
            await ask.reply_regenerate(self.room, self.user, reply_id)
        elif kind == events.ASSISTANT_CATCHUP:
            assert self.room is not None
            name = payload.get("assistant")
            if name is not None and (not isinstance(name, str) or not 0 < len(name) <= 32):
                raise BadFrame(events.BAD_REQUEST, "assistant must be an assistant's name")
            since = _int_field(payload, "since_seq", required=False, minimum=0)
            await ask.catchup(self.room, self.user, name, since)
        elif kind == events.MESSAGE_EDIT:
            await self._message_edit(payload)
        elif kind == events.MESSAGE_DELETE:
            await self._message_delete(payload)
        elif kind == events.READ:
            await self._read(payload)
        elif kind == events.PRESENCE_FETCH:
            assert self.room is not None
            try:
                users, version = await presence.presence_snapshot(self.room.pk)
            except Exception as exc:
                raise BadFrame(events.UNAVAILABLE, "presence is unavailable for a moment") from exc
            await self.send(text_data=events.presence_frame(users, version))
        elif kind == events.PING:
            assert self.room is not None
            last_seq, streaming = await db_run(selectors.room_sync_state, self.room)
            await self.send(text_data=events.pong_frame(last_seq, streaming))
        else:
            raise BadFrame(events.BAD_REQUEST, f"unknown type {kind[:40]!r}")

    async def _message_send(self, payload: dict[str, Any]) -> None:
        assert self.room is not None
        if "text" not in payload:
            raise BadFrame(events.BAD_REQUEST, "text is required")
        if not await rate_hit(f"chat:{self.user_id}", settings.CHAT_RATE_LIMIT):
            raise BadFrame(events.RATE_LIMITED, "you are sending messages too fast; wait a few seconds")
        client_id = payload.get("client_id")
        unsure = self.unsure_ids is not None and client_id in self.unsure_ids
        try:
            await ask.message_send_asking(
                room=self.room,
                user=self.user,
                text=payload["text"],
                client_id=client_id,
                reply_to=payload.get("reply_to"),
                on_saved=self._message_ack,
                announce_existing=unsure,
            )
        except DatabaseUnavailable:
            # The database stopped answering: the insert may or may not have
            # committed. The client resends; if it had, it is announced then.
            if isinstance(client_id, str):
                if self.unsure_ids is None:
                    self.unsure_ids = set()
                self.unsure_ids.add(client_id)
            raise
        if unsure and self.unsure_ids is not None:
            self.unsure_ids.discard(client_id)

    async def _message_ack(self, message: Message) -> None:
        # The sender hears back directly, before the broadcast, so a stalled
        # channel layer can delay the room but never leave the sender without
        # an answer; the broadcast copy is then dropped as already seen.
        if self.acked_ids is None:
            self.acked_ids = set()
        elif len(self.acked_ids) >= 1024:
            self.acked_ids.clear()  # echoes lost to a layer outage; resumes cover them
        self.acked_ids.add(message.id)
        await self.send(text_data=events.message_frame(message))

    async def _message_edit(self, payload: dict[str, Any]) -> None:
        assert self.room is not None
        if "text" not in payload:
            raise BadFrame(events.BAD_REQUEST, "text is required")
        message_id = _int_field(payload, "id", minimum=1)
        if not await rate_hit(f"chat:{self.user_id}", settings.CHAT_RATE_LIMIT):
            raise BadFrame(events.RATE_LIMITED, "you are changing messages too fast; wait a few seconds")
        await message_update_send(
            message_edit, room=self.room, user=self.user, message_id=message_id, text=payload["text"]
        )

    async def _message_delete(self, payload: dict[str, Any]) -> None:
        assert self.room is not None
        message_id = _int_field(payload, "id", minimum=1)
        await message_update_send(message_delete, room=self.room, user=self.user, message_id=message_id)

    async def _read(self, payload: dict[str, Any]) -> None:
        assert self.room is not None
        seq = _int_field(payload, "seq", minimum=0)
        await db_run(read_mark, room=self.room, user=self.user, seq=seq)

    async def _typing(self, payload: dict[str, Any]) -> None:
        assert self.room is not None
        active = payload.get("active")
        if not isinstance(active, bool):
            raise BadFrame(events.BAD_REQUEST, "active must be true or false")
        # A typing flood must not become a broadcast flood: repeats of the same
        # state within TYPING_REPEAT_SECONDS are dropped (clients refresh every
        # ~3 s), and changes go out at most once per CHAT_TYPING_INTERVAL, the
        # latest state last.
        now = time.monotonic()
        if active == self.typing_state and now - self.typing_sent_at < TYPING_REPEAT_SECONDS:
            self.typing_next = None
            return
        wait = self.typing_sent_at + settings.CHAT_TYPING_INTERVAL - now
        if wait > 0:
            self.typing_next = active
            if self.typing_timer is None:
                self.typing_timer = asyncio.get_running_loop().call_later(wait, self._typing_flush)
            return
        self._typing_publish(active, now)

    def _typing_flush(self) -> None:
        self.typing_timer = None
        active, self.typing_next = self.typing_next, None
        if active is None or self.closing or self.torn_down or active == self.typing_state:
            return
        self._typing_publish(active, time.monotonic())

    def _typing_publish(self, active: bool, now: float) -> None:
        assert self.room is not None
        self.typing_state, self.typing_sent_at = active, now
        group_publish(
            room_group(self.room.pk),
            events.envelope(events.typing_frame(self.username, active), events.TYPING, username=self.username),
        )

    async def _history_fetch(self, payload: dict[str, Any]) -> None:
        assert self.room is not None
        before = _int_field(payload, "before", required=False, minimum=1)
        after = _int_field(payload, "after", required=False, minimum=0)
        if (before is None) == (after is None):
            raise BadFrame(events.BAD_REQUEST, "give exactly one of before and after (message ids)")
        limit = _int_field(payload, "limit", required=False, minimum=1) or 50
        if limit > settings.CHAT_HISTORY_MAX:
            raise BadFrame(events.BAD_REQUEST, f"limit must be at most {settings.CHAT_HISTORY_MAX}")
        page = await db_run(selectors.history_page, self.room, self.user, before=before, after=after, limit=limit)
        frame, _, _ = events.history_frame(
            page.messages,
            page.truncated,
            keep="oldest" if after is not None else "newest",
            limit=settings.CHAT_MAX_SEND_FRAME_BYTES,
        )
        await self.send(text_data=frame)

    async def _assistant_cancel(self, payload: dict[str, Any]) -> None:
        assert self.room is not None
        reply_id = _int_field(payload, "reply_id", minimum=1)
        assert reply_id is not None
        if not await reply_cancel(self.room, self.user, reply_id):
            raise BadFrame(events.NOT_FOUND, "no reply with that id is being written in this room")

    async def _assistant_fetch(self, payload: dict[str, Any]) -> None:
        assert self.room is not None
        reply_id = _int_field(payload, "reply_id", minimum=1)
        reply = await db_run(selectors.reply_get, self.room, self.user, reply_id)
        if reply is None:
            raise BadFrame(events.NOT_FOUND, "no assistant reply with that id in this room")
        await self.send(text_data=events.assistant_snapshot_frame(reply))

    async def _send_error(
        self, code: str, detail: str, client_id: str | None = None, extra: dict[str, Any] | None = None
    ) -> None:
        await self.send(text_data=events.error_frame(code, detail, client_id, extra))

    # --- Group events --------------------------------------------------------------

    async def group_deliver(self, message: dict[str, Any]) -> None:
        """Called by the process's GroupHub for every message to our groups.

        It runs inside the hub's loop over every local socket: nothing here may
        wait on the database or Redis (access re-checks are spawned)."""
        if self.closing or self.torn_down:
            return
        if self.backlog is not None:
            self.backlog.append(message)
            return
        kind = message.get("type")
        if kind == events.ROOM_EVENT:
            if message.get("room_id", self.room.pk if self.room else None) != (self.room.pk if self.room else None):
                return  # a private reply's frame, for this user's sockets in another room
            frame = self._room_event_frame(message)
            if frame is not None:
                await self._frame_write(frame)
        elif kind == events.USER_NOTIFY:
            await self._frame_write(message["frame"])
        elif kind == events.USER_SESSION_END:
            if message.get("session_key") and message["session_key"] == self.session_key:
                await self.close(code=events.CLOSE_NOT_AUTHENTICATED)
        elif kind == events.USER_ACCESS or (kind == events.USER_REMOVED and self._is_my_room(message)):
            tasks.spawn(self._access_recheck(), "access-recheck")
        elif kind == events.ROOM_ACCESS and self._is_my_room(message):
            if message.get("private") and self.user_id not in message.get("members", ()):
                await self.close(code=events.CLOSE_FORBIDDEN)
        elif kind == events.ROOM_DELETED and self._is_my_room(message):
            await self.close(code=events.CLOSE_NOT_FOUND)

    def _is_my_room(self, message: dict[str, Any]) -> bool:
        return self.room is not None and message.get("room_id") == self.room.pk

    async def _access_recheck(self) -> None:
        """Something about this user's access changed (deactivated, password or
        session changed, removed from a room, the session expired): look again."""
        if self.closing or self.torn_down or self.room is None:
            return
        try:
            _, user, _ = await db_run(session_user_resolve, self.session_key)
            if not user.is_authenticated or user.pk != self.user_id:
                await self.close(code=events.CLOSE_NOT_AUTHENTICATED)
                return
            self.user = user
            await db_run(access_check_fresh, self.room.pk, user)
        except AccessLost as exc:
            await self.close(code=ACCESS_CLOSE[exc.what])
        except DatabaseUnavailable:
            pass  # every action checks again; nothing acts on stale access

    async def _backlog_flush(self) -> None:
        backlog, self.backlog = self.backlog or [], None
        for message in backlog:
            await self.group_deliver(message)

    def _room_event_frame(self, event: dict[str, Any]) -> str | None:
        """The pre-serialised frame of a room event, or None if this socket has it already."""
        kind = event["kind"]
        if kind == events.MESSAGE:
            message_id = event["id"]
            if message_id <= self.hello_max_id:
                return None
            if self.acked_ids and message_id in self.acked_ids:
                self.acked_ids.discard(message_id)
                return None
        elif kind == events.TYPING:
            if event["username"] == self.username:
                return None
        elif kind == events.PRESENCE and self.presence_deltas:
            return event["delta"]
        elif kind == events.ASSISTANT_START:
            if event["reply_id"] in self.hello_stream_seq or event["reply_id"] in self.hello_final_ids:
                return None
        elif kind == events.ASSISTANT_DELTA:
            if event["seq"] <= self.hello_stream_seq.get(event["reply_id"], 0):
                return None
        elif kind == events.ASSISTANT_END and event["reply_id"] in self.hello_final_ids:
            return None
        # message.update is never dropped: an edit after hello is news, and
        # applying the same state twice changes nothing.
        return event["frame"]
