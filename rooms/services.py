"""Writes. Every change to rooms and messages goes through here.

Synchronous functions do the database work inside one transaction; the async
``*_send``/``*_post`` functions run them off the event loop and broadcast only
after the transaction has committed (persist, then broadcast).
"""

from __future__ import annotations

import logging
import re
import time
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, connection, models, transaction
from django.db.models import F
from django.utils import timezone

from . import events
from .access import AccessLost, access_check
from .db import db_run
from .models import Membership, Message, Room
from .ratelimit import RateLimiterUnavailable, rate_hit
from .realtime import group_publish, room_group
from .rendering import message_render

logger = logging.getLogger(__name__)


@dataclass
class ServiceError(Exception):
    code: str
    detail: str

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


# --- Rooms ------------------------------------------------------------------


def room_create(
    *,
    slug: str,
    name: str,
    created_by: AbstractBaseUser | None = None,
    is_private: bool = False,
    members: list[AbstractBaseUser] | None = None,
) -> Room:
    with transaction.atomic():
        room = Room.objects.create(slug=slug, name=name, is_private=is_private, created_by=created_by)
        people = list(members or [])
        if created_by is not None and created_by not in people:
            people.append(created_by)
        for user in people:
            Membership.objects.get_or_create(room=room, user=user)
    return room


def membership_add(room: Room, user: AbstractBaseUser) -> Membership:
    membership, _ = Membership.objects.get_or_create(room=room, user=user)
    return membership


def membership_remove(room: Room, user: AbstractBaseUser) -> None:
    # The post_delete signal closes the user's open sockets to a private room.
    for membership in Membership.objects.filter(room=room, user=user):
        membership.delete()


# --- Messages ---------------------------------------------------------------


def mention_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w@])@{re.escape(name)}(?![\w-])", re.IGNORECASE)


def message_mentions_assistant(room: Room, text: str) -> bool:
    return room.assistant_enabled and bool(mention_pattern(room.assistant_name).search(text))


# Characters that draw nothing: a message of only these (zero-width spaces, joiners,
# BOMs, bidi marks, Hangul fillers, the blank Braille pattern) is empty.
_INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def text_is_blank(text: str) -> bool:
    return all(ch.isspace() or ch in _INVISIBLE or unicodedata.category(ch) == "Cf" for ch in text)


def message_validate(text: object, client_id: object) -> tuple[str, str | None]:
    if not isinstance(text, str):
        raise ServiceError(events.BAD_REQUEST, "text must be a string")
    if client_id is not None and (not isinstance(client_id, str) or not 0 < len(client_id) <= 64):
        raise ServiceError(events.BAD_REQUEST, "client_id must be a string of 1 to 64 characters")
    if client_id is not None and "\x00" in client_id:
        raise ServiceError(events.BAD_REQUEST, "client_id must not contain NUL characters")
    if text_is_blank(text):
        raise ServiceError(events.BAD_REQUEST, "text must not be empty")
    if len(text) > settings.CHAT_MAX_MESSAGE_CHARS:
        raise ServiceError(events.TOO_LONG, f"text is longer than {settings.CHAT_MAX_MESSAGE_CHARS} characters")
    # NUL cannot be stored in PostgreSQL text and has no business in chat.
    if "\x00" in text:
        raise ServiceError(events.BAD_REQUEST, "text must not contain NUL characters")
    # JSON can smuggle lone surrogates ("\ud800"), which no database can store.
    for value in (text, client_id or ""):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ServiceError(events.BAD_REQUEST, "text must be valid Unicode") from None
    return text, client_id


def _room_lock(room_id: int) -> Room:
    """The room row, locked until the transaction commits: every seq is taken
    under it, so seqs have no holes and ids within a room commit in order."""
    room = Room.objects.select_for_update().filter(pk=room_id).first()
    if room is None:
        raise AccessLost("gone")
    return room


def _seq_take(room: Room) -> int:
    """The locked room's next seq (see ``_room_lock``)."""
    room.last_seq += 1
    Room.objects.filter(pk=room.pk).update(last_seq=F("last_seq") + 1)
    return room.last_seq


def message_create(
    *, room: Room, user: AbstractBaseUser, text: object, client_id: object = None
) -> tuple[Message, bool]:
    """Save a user message; returns ``(message, created)``.

    A repeated ``client_id`` (a retry after reconnect) returns the message it
    created the first time instead of a second copy.
    """
    text, client_id = message_validate(text, client_id)
    if client_id is not None:
        existing = Message.objects.filter(room=room, author=user, client_id=client_id).first()
        if existing is not None:
            return existing, False
    html = message_render(text)
    mentioned = message_mentions_assistant(room, text)
    try:
        with transaction.atomic():
            locked = _room_lock(room.pk)
            access_check(locked, user)
            if mentioned:
                _queue_room_check(locked)
            seq = _seq_take(locked)
            message = Message.objects.create(
                room=room,
                seq=seq,
                author=user,
                author_name=user.get_username(),
                role=Message.Role.USER,
                text=text,
                html=html,
                client_id=client_id,
                reply_state=Message.ReplyState.PENDING if mentioned else Message.ReplyState.NONE,
                heartbeat=timezone.now() if mentioned else None,
            )
    except IntegrityError:
        if client_id is None:
            raise
        # Two tabs retried the same client_id at once: the other one won.
        existing = Message.objects.filter(room=room, author=user, client_id=client_id).first()
        if existing is None:
            raise
        return existing, False
    return message, True


def _queue_room_check(room: Room) -> None:
    """Refuse a mention when the room's assistant queue is full (bounded work
    per room, whatever the number of accounts asking)."""
    limit = settings.ASSISTANT_MAX_QUEUE_PER_ROOM
    if limit and Message.objects.filter(room_id=room.pk, reply_state=Message.ReplyState.PENDING).count() >= limit:
        raise ServiceError(
            events.RATE_LIMITED,
            f"@{room.assistant_name} already has {limit} requests waiting in this room; "
            "ask again once it has answered some",
        )


def _message_by_client_id(room_id: int, user_id: int, client_id: str) -> Message | None:
    return Message.objects.filter(room_id=room_id, author_id=user_id, client_id=client_id).first()


async def message_send(
    *,
    room: Room,
    user: AbstractBaseUser,
    text: object,
    client_id: object = None,
    on_saved: Callable[[Message], Awaitable[None]] | None = None,
    announce_existing: bool = False,
) -> tuple[Message, bool]:
    """Persist a user message, then tell the room.

    ``on_saved`` runs after the commit and before the broadcast: the sender's
    acknowledgement, which must not wait on (or race with) the channel layer.
    A created message whose ``reply_state`` is pending asked the assistant: the
    caller hands it on (``rooms.assistant.reply_request``).

    ``announce_existing``: a resend whose first attempt ended without knowing
    whether it committed (the database stopped answering mid-transaction) may
    find the message saved but never announced; it is announced then (clients
    drop a copy they already have by id).
    """
    text, client_id = message_validate(text, client_id)
    if message_mentions_assistant(room, text):
        if client_id:
            # A resend after reconnect is answered with the original before the
            # assistant limit counts it again (message_create dedupes the rest).
            existing = await db_run(_message_by_client_id, room.pk, user.pk, client_id)
            if existing is not None:
                if on_saved is not None:
                    await on_saved(existing)
                return existing, False
        try:
            allowed = await rate_hit(f"assistant:{user.pk}", settings.ASSISTANT_RATE_LIMIT, strict=True)
        except RateLimiterUnavailable:
            # Unmetered model requests cost money: refuse while the limiter is away.
            raise ServiceError(
                events.UNAVAILABLE, f"@{room.assistant_name} is unavailable for a moment; try again shortly"
            ) from None
        if not allowed:
            raise ServiceError(
                events.RATE_LIMITED, f"@{room.assistant_name} is busy with your earlier requests; try again in a minute"
            )
    message, created = await db_run(message_create, room=room, user=user, text=text, client_id=client_id)
    if on_saved is not None:
        await on_saved(message)
    if created or announce_existing:
        # Not awaited: the sender already has its ack and a stalled layer must
        # not hold up its next frame.
        group_publish(
            room_group(room.pk), events.envelope(events.message_frame(message), events.MESSAGE, id=message.id)
        )
    return message, created


# --- Assistant replies ------------------------------------------------------


def _site_lock() -> None:
    """Serialise claims of a site-wide assistant slot (PostgreSQL; SQLite's
    IMMEDIATE transactions are serial already). Always taken after the room
    lock, so two claims never wait on each other in opposite orders."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [SITE_ASSISTANT_LOCK])


SITE_ASSISTANT_LOCK = 0x63686174  # "chat"


def _streaming_replies() -> models.QuerySet[Message]:
    return Message.objects.filter(role=Message.Role.ASSISTANT, status=Message.Status.STREAMING)


def _site_ahead(room_id: int, request_id: int) -> int:
    """Rooms whose first waiting request is older than ``request_id`` and that
    could start it now: they get the next free site-wide slots first."""
    return (
        Message.objects.filter(reply_state=Message.ReplyState.PENDING, pk__lt=request_id)
        .exclude(room_id=room_id)
        .exclude(room_id__in=_streaming_replies().values("room_id"))
        .values("room_id")
        .distinct()
        .count()
    )


def reply_claim_turn(room_id: int, request_id: int) -> Message | None:
    """Start the reply to ``request_id`` if it is that request's turn.

    Under the room lock: the oldest pending mention of the room goes first,
    only while fewer than ASSISTANT_MAX_CONCURRENT_PER_ROOM replies stream in
    the room and fewer than ASSISTANT_MAX_CONCURRENT in the whole site (across
    every process: many accounts cannot multiply the model bill), and rooms
    that have waited longer get free site-wide slots first. Returns the new
    reply row (status streaming, the room's next seq) or None to wait.
    """
    with transaction.atomic():
        room = _room_lock(room_id)
        request = Message.objects.filter(pk=request_id, room_id=room_id).first()
        if request is None or request.reply_state != Message.ReplyState.PENDING:
            return None
        first = Message.objects.filter(room_id=room_id, reply_state=Message.ReplyState.PENDING).order_by("seq").first()
        streaming = _streaming_replies().filter(room_id=room_id).count()
        now = timezone.now()
        turn = first is not None and first.pk == request_id and streaming < settings.ASSISTANT_MAX_CONCURRENT_PER_ROOM
        if turn and settings.ASSISTANT_MAX_CONCURRENT:
            _site_lock()
            free = settings.ASSISTANT_MAX_CONCURRENT - _streaming_replies().count()
            turn = free > 0 and _site_ahead(room_id, request_id) < free
        if not turn:
            Message.objects.filter(pk=request_id).update(heartbeat=now)
            return None
        reply = Message.objects.create(
            room=room,
            seq=_seq_take(room),
            author=None,
            author_name=room.assistant_name,
            role=Message.Role.ASSISTANT,
            text="",
            status=Message.Status.STREAMING,
            in_reply_to=request,
            heartbeat=now,
            model=room.assistant_model or settings.ASSISTANT_MODEL,
        )
        Message.objects.filter(pk=request_id).update(reply_state=Message.ReplyState.STARTED, heartbeat=None)
    return reply


def reply_queue_position(room_id: int, request_id: int) -> int:
    """1-based place of a pending request in line (0: not waiting any more):
    the requests before it in its room, and for the room's first, the rooms
    ahead of it for a site-wide slot."""
    request = Message.objects.filter(pk=request_id).only("seq", "reply_state").first()
    if request is None or request.reply_state != Message.ReplyState.PENDING:
        return 0
    in_room = Message.objects.filter(
        room_id=room_id, reply_state=Message.ReplyState.PENDING, seq__lte=request.seq
    ).count()
    cap = settings.ASSISTANT_MAX_CONCURRENT
    if in_room == 1 and cap and _streaming_replies().count() >= cap:
        return 1 + _site_ahead(room_id, request_id)
    return in_room


def reply_set_context(reply_id: int, context_ids: list[int]) -> None:
    Message.objects.filter(pk=reply_id).update(context_ids=context_ids)


def reply_checkpoint_many(checkpoints: Sequence[tuple[int, str, int]]) -> list[bool]:
    """Save several replies' text so far, as ``(reply_id, text, stream_seq)``,
    in one transaction; per reply, False if it is no longer streaming (swept)."""
    now = timezone.now()
    with transaction.atomic():
        return [
            bool(
                Message.objects.filter(pk=reply_id, status=Message.Status.STREAMING).update(
                    text=text, stream_seq=stream_seq, heartbeat=now
                )
            )
            for reply_id, text, stream_seq in checkpoints
        ]


def reply_heartbeat(reply_id: int) -> None:
    Message.objects.filter(pk=reply_id, status=Message.Status.STREAMING).update(heartbeat=timezone.now())


@dataclass
class ReplyOutcome:
    status: str
    text: str
    stream_seq: int
    model: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    first_token_ms: int | None = None
    total_ms: int | None = None
    finish_reason: str = ""
    error_code: str = ""
    error: str = ""
    cancelled_by: str = ""


def reply_finish(reply_id: int, outcome: ReplyOutcome) -> Message | None:
    """Give a streaming reply its one terminal state. None if something else
    (a sweep) already ended it, so exactly one assistant.end goes out."""
    now = timezone.now()
    with transaction.atomic():
        updated = Message.objects.filter(pk=reply_id, status=Message.Status.STREAMING).update(
            status=outcome.status,
            text=outcome.text,
            html=message_render(outcome.text) if outcome.text else "",
            stream_seq=outcome.stream_seq,
            model=outcome.model or F("model"),
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            first_token_ms=outcome.first_token_ms,
            total_ms=outcome.total_ms,
            finish_reason=outcome.finish_reason,
            error_code=outcome.error_code,
            error=outcome.error,
            cancelled_by=outcome.cancelled_by,
            finished=now,
            heartbeat=None,
        )
    if not updated:
        return None
    return Message.objects.get(pk=reply_id)


# A sweep that waited longer than this for its turn on the database thread (or
# for a connection) is skipped: the database was slow or away meanwhile, so no
# worker could check in either, and a stale beat proves nothing.
SWEEP_MAX_DELAY = 1.0


def reply_sweep_stale(requested_at: float | None = None) -> tuple[list[Message], list[Message]]:
    """Mark replies whose worker died as interrupted, and return
    ``(interrupted replies, orphaned pending requests)`` for the caller to
    announce and adopt. ``requested_at``: ``time.monotonic()`` when the caller
    asked (same process)."""
    if requested_at is not None and time.monotonic() - requested_at > SWEEP_MAX_DELAY:
        return [], []
    cutoff = timezone.now() - timedelta(seconds=settings.ASSISTANT_STALE_SECONDS)
    dead_ids = list(
        Message.objects.filter(
            role=Message.Role.ASSISTANT, status=Message.Status.STREAMING, heartbeat__lt=cutoff
        ).values_list("pk", flat=True)
    )
    interrupted: list[Message] = []
    for reply_id in dead_ids:
        reply = Message.objects.filter(pk=reply_id).only("text", "stream_seq").first()
        if reply is None:
            continue
        ended = reply_finish(
            reply_id,
            ReplyOutcome(
                status=Message.Status.INTERRUPTED,
                text=reply.text,
                stream_seq=reply.stream_seq,
                error_code="interrupted",
                error="The server handling this reply stopped before it finished.",
            ),
        )
        if ended is not None:
            interrupted.append(ended)
    # Claim orphaned requests by bumping their heartbeat: only one process wins each.
    orphans: list[Message] = []
    for request in Message.objects.filter(reply_state=Message.ReplyState.PENDING, heartbeat__lt=cutoff).select_related(
        "room"
    ):
        claimed = Message.objects.filter(pk=request.pk, heartbeat=request.heartbeat).update(heartbeat=timezone.now())
        if claimed:
            orphans.append(request)
    return interrupted, orphans
