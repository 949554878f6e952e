"""Replies streamed by a bot through the API, seen by every tab exactly like
the room assistant's: ``assistant.start``, ``assistant.delta``..., one
``assistant.end``.

No process runs a bot's reply, so its state lives in the database, and any
server process can take the bot's next request:

- ``reply_start``: the reply row (role assistant, author the bot, status
  streaming, the room's next seq under the room lock, like the assistant's)
  and its ``BotReply`` (the bot's last delta number, text accepted but not yet
  broadcast), then ``assistant.start``.
- ``reply_delta``: under the ``BotReply`` row lock: a repeated ``seq`` is
  ignored (a retry), a gap is 409, an ended reply is 409 (``cancelled`` after a
  Stop). The text joins what is pending; it is flushed — folded into the
  row's text with the next stream seq and a fresh heartbeat (the checkpoint),
  then broadcast as ``assistant.delta`` — as the assistant's are coalesced:
  once ASSISTANT_FLUSH_CHARS are pending or ASSISTANT_FLUSH_MS after the last
  flush (a timer in the process that took the delta flushes a quiet tail).
- ``reply_end``: flush, then the one terminal state (``reply_finish``), then
  ``assistant.end``.

Stop (``rooms.assistant.cancel``) ends a bot's reply right in the database;
the sweeper ends one whose bot fell silent for ASSISTANT_STALE_SECONDS
(``interrupted``): every delta refreshes the heartbeat, so a bot that has
nothing to say for a while posts an empty delta.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .. import events, services
from ..access import access_check, access_check_fresh
from ..assistant import ask
from ..assistant.services import ReplyOutcome, reply_finish
from ..db import db_run
from ..models import Message, Room
from ..realtime import group_publish, room_group
from ..tasks import tasks
from .http import ApiError, Caller, rate_limit
from .models import BotReply

# A bot's reply may grow to this many characters; one delta to a tenth of it.
MAX_REPLY_CHARS = 200_000
MAX_DELTA_CHARS = 20_000
BOT_ERROR = "The bot could not answer."


@dataclass
class Flushed:
    room_id: int
    stream_seq: int = 0
    chunk: str = ""
    pending: bool = False  # text still waiting for the next flush
    duplicate: bool = False
    bot_seq: int = 0


# Per process: one writer per reply at a time (flushes leave in order), and a
# timer per reply for a quiet tail.
_locks: dict[int, asyncio.Lock] = {}
_timers: dict[int, asyncio.Task[None]] = {}


def _reset() -> None:
    _locks.clear()
    _timers.clear()


tasks.on_new_loop(_reset)


def _lock(reply_id: int) -> asyncio.Lock:
    lock = _locks.get(reply_id)
    if lock is None:
        lock = _locks[reply_id] = asyncio.Lock()
    return lock


async def _announce(room_id: int, envelope: dict[str, object]) -> None:
    await group_publish(room_group(room_id), envelope)


# --- Start -----------------------------------------------------------------------------


def _reply_create(room: Room, user: object, in_reply_to: int | None) -> Message:
    with transaction.atomic():
        locked = services.room_lock(room.pk)
        access_check(locked, user)  # type: ignore[arg-type]
        asked = None
        if in_reply_to is not None:
            asked = Message.objects.filter(pk=in_reply_to, room_id=room.pk, visible_to=None).first()
            if asked is None:
                raise ApiError(404, events.NOT_FOUND, "in_reply_to is not a message of this room")
        now = timezone.now()
        reply = Message.objects.create(
            room=locked,
            seq=services.seq_take(locked),
            author=user,
            author_name=user.get_username(),  # type: ignore[attr-defined]
            author_bot=True,
            role=Message.Role.ASSISTANT,
            text="",
            status=Message.Status.STREAMING,
            in_reply_to=asked,
            asked_by_id=asked.author_id if asked is not None else None,
            heartbeat=now,
        )
        BotReply.objects.create(reply=reply, last_flush=now)
        _ = reply.reply_to  # loaded here: the frame is built on the event loop
    return reply


async def reply_start(room: Room, caller: Caller, in_reply_to: int | None) -> Message:
    if not caller.is_bot:
        raise ApiError(403, events.FORBIDDEN, "only bot accounts stream replies (ask an admin to mark yours a bot)")
    await rate_limit(
        f"chat:{caller.user.pk}", settings.CHAT_RATE_LIMIT, "you are starting replies too fast; wait a few seconds"
    )
    reply = await db_run(_reply_create, room, caller.user, in_reply_to)
    ask.background_ensure()  # this process sweeps too: a bot that falls silent is interrupted
    await _announce(
        room.pk, events.envelope(events.assistant_start_frame(reply), events.ASSISTANT_START, reply_id=reply.pk)
    )
    return reply


# --- Deltas ------------------------------------------------------------------------------


def _bot_reply(reply_id: int, user: object) -> BotReply:
    """The caller's streaming bot reply, locked; 404, 403 or 409 otherwise."""
    row = BotReply.objects.select_for_update().select_related("reply").filter(reply_id=reply_id).first()
    if row is None:
        raise ApiError(404, events.NOT_FOUND, "no bot reply with that id")
    access_check_fresh(row.reply.room_id, user)  # type: ignore[arg-type]
    if row.reply.author_id != user.pk:  # type: ignore[attr-defined]
        raise ApiError(403, events.FORBIDDEN, "this reply is another bot's")
    status = row.reply.status
    if status == Message.Status.CANCELLED:
        by = row.reply.cancelled_by
        raise ApiError(409, "cancelled", f"the reply was stopped{' by ' + by if by else ''}", extra={"status": status})
    if status != Message.Status.STREAMING:
        raise ApiError(409, "ended", f"the reply has ended ({status})", extra={"status": status})
    return row


def _flush(row: BotReply, now: object) -> Flushed:
    """Fold the pending text into the reply (its checkpoint); the caller broadcasts it."""
    reply = row.reply
    chunk, seq = row.pending, reply.stream_seq + 1
    updated = Message.objects.filter(pk=reply.pk, status=Message.Status.STREAMING).update(
        text=reply.text + chunk, stream_seq=seq, heartbeat=now
    )
    if not updated:
        raise ApiError(409, "ended", "the reply has ended")
    reply.text, reply.stream_seq = reply.text + chunk, seq
    row.pending, row.last_flush = "", now  # type: ignore[assignment]
    return Flushed(room_id=reply.room_id, stream_seq=seq, chunk=chunk)


def _delta_apply(reply_id: int, user: object, text: str, seq: int) -> Flushed:
    with transaction.atomic():
        row = _bot_reply(reply_id, user)
        result = Flushed(room_id=row.reply.room_id, bot_seq=row.bot_seq)
        if seq <= row.bot_seq:
            result.duplicate = True
            return result
        if seq > row.bot_seq + 1:
            raise ApiError(
                409, "gap", f"expected delta seq {row.bot_seq + 1}, got {seq}", extra={"expected": row.bot_seq + 1}
            )
        if len(row.reply.text) + len(row.pending) + len(text) > MAX_REPLY_CHARS:
            raise ApiError(413, events.TOO_LONG, f"a reply may be at most {MAX_REPLY_CHARS} characters")
        now = timezone.now()
        row.bot_seq = seq
        row.pending += text
        due = row.last_flush + timedelta(milliseconds=settings.ASSISTANT_FLUSH_MS)
        if row.pending and (len(row.pending) >= settings.ASSISTANT_FLUSH_CHARS or now >= due):
            result = _flush(row, now)
        else:
            # Nothing to show yet: still a sign of life.
            Message.objects.filter(pk=reply_id, status=Message.Status.STREAMING).update(heartbeat=now)
            result.pending = bool(row.pending)
        result.bot_seq = seq
        row.save(update_fields=["bot_seq", "pending", "last_flush"])
    return result


def _pending_flush(reply_id: int) -> Flushed | None:
    """Flush what a reply has pending (its bot went quiet, or it is ending)."""
    with transaction.atomic():
        row = BotReply.objects.select_for_update().select_related("reply").filter(reply_id=reply_id).first()
        if row is None or not row.pending or row.reply.status != Message.Status.STREAMING:
            return None
        result = _flush(row, timezone.now())
        row.save(update_fields=["pending", "last_flush"])
    return result


async def _broadcast(reply_id: int, flushed: Flushed | None) -> None:
    if flushed is None or not flushed.chunk:
        return
    frame = events.assistant_delta_frame(reply_id, flushed.stream_seq, flushed.chunk)
    await _announce(
        flushed.room_id, events.envelope(frame, events.ASSISTANT_DELTA, reply_id=reply_id, seq=flushed.stream_seq)
    )


async def reply_delta(caller: Caller, reply_id: int, text: str, seq: int) -> dict[str, object]:
    if len(text) > MAX_DELTA_CHARS:
        raise ApiError(413, events.TOO_LONG, f"a delta may be at most {MAX_DELTA_CHARS} characters")
    async with _lock(reply_id):
        flushed = await db_run(_delta_apply, reply_id, caller.user, text, seq)
        await _broadcast(reply_id, flushed)
    if flushed.pending:
        _timer_ensure(reply_id)
    return {"reply_id": reply_id, "seq": flushed.bot_seq, "duplicate": flushed.duplicate}


def _timer_ensure(reply_id: int) -> None:
    timer = _timers.get(reply_id)
    if timer is None or timer.done():
        _timers[reply_id] = tasks.spawn(_flush_later(reply_id), name=f"bot-flush-{reply_id}")


async def _flush_later(reply_id: int) -> None:
    try:
        await asyncio.sleep(settings.ASSISTANT_FLUSH_MS / 1000)
        async with _lock(reply_id):
            with contextlib.suppress(ApiError):
                await _broadcast(reply_id, await db_run(_pending_flush, reply_id))
    finally:
        _timers.pop(reply_id, None)
        lock = _locks.get(reply_id)
        if lock is not None and not lock.locked():
            _locks.pop(reply_id, None)


# --- End ---------------------------------------------------------------------------------


def _finish(reply_id: int, user: object, status: str, error: str) -> Message | None:
    with transaction.atomic():
        row = _bot_reply(reply_id, user)
        reply = row.reply
    outcome = ReplyOutcome(
        status=status,
        text=reply.text,
        stream_seq=reply.stream_seq,
        error_code="bot" if status == Message.Status.ERROR else "",
        error=(error.strip()[:300] or BOT_ERROR) if status == Message.Status.ERROR else "",
    )
    return reply_finish(reply_id, outcome)


def _ended_state(reply_id: int) -> Message | None:
    return Message.objects.select_related("reply_to").filter(pk=reply_id).first()


async def reply_end(caller: Caller, reply_id: int, status: str, error: str) -> Message:
    async with _lock(reply_id):
        try:
            await _broadcast(reply_id, await db_run(_pending_flush_own, reply_id, caller.user))
            final = await db_run(_finish, reply_id, caller.user, status, error)
        except ApiError as exc:
            if exc.code == "ended":
                # A retry of an end whose answer was lost: the same end again.
                row = await db_run(_ended_state, reply_id)
                if row is not None and row.status == status and row.author_id == caller.user.pk:
                    return row
            raise
    if final is None:  # ended meanwhile (a Stop, the sweeper): that one was announced
        row = await db_run(_ended_state, reply_id)
        if row is not None and row.status == Message.Status.CANCELLED:
            raise ApiError(409, "cancelled", "the reply was stopped", extra={"status": row.status})
        raise ApiError(409, "ended", "the reply has ended", extra={"status": row.status if row else ""})
    await _announce(
        final.room_id, events.envelope(events.assistant_end_frame(final), events.ASSISTANT_END, reply_id=reply_id)
    )
    return final


def _pending_flush_own(reply_id: int, user: object) -> Flushed | None:
    with transaction.atomic():
        _bot_reply(reply_id, user)  # 404/403/409 before anything is written
    return _pending_flush(reply_id)
