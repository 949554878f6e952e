"""Writes of the assistant: requests, their turn in the queue, replies from
start to their one terminal state. Synchronous; the worker runs them through
``rooms.db.db_run``.

A request (``AssistantRequest``) is one assistant asked once: a mention, a
regenerate, a catch-up. Its reply row is created when its turn comes, so the
reply takes the room's next ``seq`` at that moment (a private catch-up takes
none).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import connection, models, transaction
from django.db.models import F
from django.utils import timezone

from .. import events
from ..models import AssistantRequest, Message, Room
from ..rendering import message_render_mentions
from ..services import ServiceError, room_lock, seq_take
from . import budget

SITE_ASSISTANT_LOCK = 0x63686174  # "chat"
# A sweep that waited longer than this for its turn on the database thread (or
# for a connection) is skipped: the database was slow or away meanwhile, so no
# worker could check in either, and a stale beat proves nothing.
SWEEP_MAX_DELAY = 1.0


def _site_lock() -> None:
    """Serialise claims of a site-wide assistant slot (PostgreSQL; SQLite's
    IMMEDIATE transactions are serial already). Always taken after the room
    lock, so two claims never wait on each other in opposite orders."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [SITE_ASSISTANT_LOCK])


def _streaming_replies() -> models.QuerySet[Message]:
    return Message.objects.filter(role=Message.Role.ASSISTANT, status=Message.Status.STREAMING)


def _assistant_slots() -> models.QuerySet[Message]:
    """The streaming replies that take an assistant slot (a bot streaming through
    the API costs us no model and makes no assistant wait)."""
    return _streaming_replies().filter(assistant__isnull=False)


def _pending() -> models.QuerySet[AssistantRequest]:
    return AssistantRequest.objects.filter(state=AssistantRequest.State.PENDING)


def _site_ahead(room_id: int, request_id: int) -> int:
    """Rooms whose first waiting request is older than ``request_id`` and that
    could start it now: they get the next free site-wide slots first."""
    return (
        _pending()
        .filter(pk__lt=request_id)
        .exclude(room_id=room_id)
        .exclude(room_id__in=_assistant_slots().values("room_id"))
        .values("room_id")
        .distinct()
        .count()
    )


def request_claim_turn(request_id: int) -> Message | None:
    """Start the reply to request ``request_id`` if it is its turn.

    Under the room lock: the oldest pending request of the room goes first,
    only while fewer than ASSISTANT_MAX_CONCURRENT_PER_ROOM replies stream in
    the room and fewer than ASSISTANT_MAX_CONCURRENT in the whole site (across
    every process: many accounts cannot multiply the model bill), and rooms
    that have waited longer get free site-wide slots first. A request whose
    asker or room is over budget by now gets a reply that ends at once
    (``budget_exceeded``), without asking the model.

    Returns the new reply row (status streaming) or None to wait.
    """
    with transaction.atomic():
        head = AssistantRequest.objects.filter(pk=request_id).only("room_id").first()
        if head is None:
            return None
        room = room_lock(head.room_id)
        request = (
            AssistantRequest.objects.select_related("assistant", "message", "requester")
            .filter(pk=request_id, state=AssistantRequest.State.PENDING)
            .first()
        )
        if request is None:
            return None
        now = timezone.now()
        first = _pending().filter(room_id=room.pk).order_by("id").values_list("pk", flat=True).first()
        streaming = _assistant_slots().filter(room_id=room.pk).count()
        turn = first == request_id and streaming < settings.ASSISTANT_MAX_CONCURRENT_PER_ROOM
        if turn and settings.ASSISTANT_MAX_CONCURRENT:
            _site_lock()
            free = settings.ASSISTANT_MAX_CONCURRENT - _assistant_slots().count()
            turn = free > 0 and _site_ahead(room.pk, request_id) < free
        if not turn:
            AssistantRequest.objects.filter(pk=request_id).update(heartbeat=now)
            return None
        assistant = request.assistant
        if assistant is None or not assistant.enabled:
            AssistantRequest.objects.filter(pk=request_id).update(state=AssistantRequest.State.REFUSED, heartbeat=None)
            return None
        private = request.kind == AssistantRequest.Kind.CATCHUP
        reply = Message.objects.create(
            room=room,
            seq=None if private else seq_take(room),
            author=None,
            author_name=assistant.name,
            role=Message.Role.ASSISTANT,
            text="",
            status=Message.Status.STREAMING,
            in_reply_to=request.message,
            heartbeat=now,
            model=assistant.model or settings.ASSISTANT_MODEL,
            assistant=assistant,
            asked_by=request.requester,
            visible_to=request.requester if private else None,
        )
        if request.kind == AssistantRequest.Kind.REGENERATE and request.regenerates_id:
            _versions_link(reply, request.regenerates_id)
        AssistantRequest.objects.filter(pk=request_id).update(
            state=AssistantRequest.State.STARTED, heartbeat=None, reply=reply
        )
    return reply


def _versions_link(reply: Message, previous_id: int) -> None:
    """Make ``reply`` a version of ``previous_id``'s group: every version lists
    the others, oldest first."""
    previous = Message.objects.filter(pk=previous_id).only("versions").first()
    group = sorted({*(previous.versions if previous else []), previous_id, reply.pk})
    for member in group:
        others = [pk for pk in group if pk != member]
        Message.objects.filter(pk=member).update(versions=others)
    reply.versions = [pk for pk in group if pk != reply.pk]


def request_queue_position(request_id: int) -> int:
    """1-based place of a pending request in line (0: not waiting any more):
    the requests before it in its room, and for the room's first, the rooms
    ahead of it for a site-wide slot."""
    request = AssistantRequest.objects.filter(pk=request_id).only("room_id", "state").first()
    if request is None or request.state != AssistantRequest.State.PENDING:
        return 0
    in_room = _pending().filter(room_id=request.room_id, pk__lte=request_id).count()
    cap = settings.ASSISTANT_MAX_CONCURRENT
    if in_room == 1 and cap and _assistant_slots().count() >= cap:
        return 1 + _site_ahead(request.room_id, request_id)
    return in_room


def request_summary(request_id: int) -> dict[str, object]:
    request = AssistantRequest.objects.select_related("assistant").filter(pk=request_id).first()
    private = request is not None and request.kind == AssistantRequest.Kind.CATCHUP
    return {
        "in_reply_to": request.message_id if request else None,
        "assistant": request.assistant.name if request and request.assistant else None,
        "private_to": request.requester_id if private else None,
    }


def request_budget_refusal(reply_id: int) -> str | None:
    """Why a started reply may not ask the model (its asker or room is over
    budget by now: requests that waited in the queue are checked again), or None."""
    reply = Message.objects.select_related("room").filter(pk=reply_id).only("room", "asked_by_id").first()
    if reply is None:
        return None
    exceeded = budget.check(reply.room, reply.asked_by_id)
    return exceeded.detail if exceeded is not None else None


def versions_of(reply_id: int) -> list[Message]:
    """The other versions of a reply (regenerated ones), oldest first."""
    reply = Message.objects.filter(pk=reply_id).only("versions").first()
    if reply is None or not reply.versions:
        return []
    return list(Message.objects.select_related("reply_to").filter(pk__in=reply.versions).order_by("pk"))


def request_adopt_stale(cutoff_seconds: float) -> list[AssistantRequest]:
    """Pending requests whose waiting worker stopped checking in (its process
    died): claimed for this process by bumping their heartbeat (one winner)."""
    cutoff = timezone.now() - timedelta(seconds=cutoff_seconds)
    adopted: list[AssistantRequest] = []
    for request in _pending().filter(heartbeat__lt=cutoff):
        if AssistantRequest.objects.filter(pk=request.pk, heartbeat=request.heartbeat).update(heartbeat=timezone.now()):
            adopted.append(request)
    return adopted


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
    """Give a streaming reply its one terminal state (and its cost). None if
    something else (a sweep, a stop) already ended it, so exactly one
    assistant.end goes out."""
    now = timezone.now()
    cut = outcome.status != Message.Status.COMPLETE
    html = message_render_mentions(outcome.text, (), cut=cut)[0] if outcome.text else ""
    with transaction.atomic():
        updated = Message.objects.filter(pk=reply_id, status=Message.Status.STREAMING).update(
            status=outcome.status,
            text=outcome.text,
            html=html,
            stream_seq=outcome.stream_seq,
            model=outcome.model or F("model"),
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            cost=budget.cost_of(outcome.model, outcome.prompt_tokens, outcome.completion_tokens),
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
    return Message.objects.select_related("reply_to").get(pk=reply_id)


def reply_sweep_stale(requested_at: float | None = None) -> tuple[list[Message], list[AssistantRequest]]:
    """Mark replies whose worker died as interrupted, and return
    ``(interrupted replies, orphaned pending requests)`` for the caller to
    announce and adopt. ``requested_at``: ``time.monotonic()`` when the caller
    asked (same process)."""
    if requested_at is not None and time.monotonic() - requested_at > SWEEP_MAX_DELAY:
        return [], []
    cutoff = timezone.now() - timedelta(seconds=settings.ASSISTANT_STALE_SECONDS)
    dead_ids = list(_streaming_replies().filter(heartbeat__lt=cutoff).values_list("pk", flat=True))
    interrupted: list[Message] = []
    for reply_id in dead_ids:
        reply = Message.objects.filter(pk=reply_id).only("text", "stream_seq", "assistant_id").first()
        if reply is None:
            continue
        why = (
            "The server handling this reply stopped before it finished."
            if reply.assistant_id is not None
            else "The bot stopped sending before it finished."
        )
        ended = reply_finish(
            reply_id,
            ReplyOutcome(
                status=Message.Status.INTERRUPTED,
                text=reply.text,
                stream_seq=reply.stream_seq,
                error_code="interrupted",
                error=why,
            ),
        )
        if ended is not None:
            interrupted.append(ended)
    return interrupted, request_adopt_stale(settings.ASSISTANT_STALE_SECONDS)


def reply_cancel_mark(reply_id: int, by: str) -> Message | None:
    """End a streaming reply ``cancelled`` right here (no process runs it: a
    bot's reply, or one whose worker is gone). None if it already ended."""
    reply = _streaming_replies().filter(pk=reply_id).only("text", "stream_seq").first()
    if reply is None:
        return None
    return reply_finish(
        reply_id,
        ReplyOutcome(status=Message.Status.CANCELLED, text=reply.text, stream_seq=reply.stream_seq, cancelled_by=by),
    )


# --- Asking --------------------------------------------------------------------------


def request_regenerate(*, room: Room, user: object, reply_id: int) -> AssistantRequest:
    """Ask the same assistant the same question again (the asker, or a room
    moderator): a new version of ``reply_id``."""
    from ..selectors import room_may_moderate

    with transaction.atomic():
        locked = room_lock(room.pk)
        reply = (
            Message.objects.select_related("assistant", "in_reply_to")
            .filter(pk=reply_id, room_id=room.pk, role=Message.Role.ASSISTANT, visible_to=None)
            .first()
        )
        if reply is None or reply.in_reply_to_id is None:
            raise ServiceError(events.NOT_FOUND, "no assistant reply with that id in this room")
        if reply.status == Message.Status.STREAMING:
            raise ServiceError(events.BAD_REQUEST, "this reply is still being written")
        if reply.assistant is None or not reply.assistant.enabled:
            raise ServiceError(events.NOT_FOUND, "that assistant is no longer in this room")
        if reply.asked_by_id != user.pk and not room_may_moderate(locked, user):  # type: ignore[attr-defined]
            raise ServiceError(events.FORBIDDEN, "only who asked, or a room moderator, may regenerate a reply")
        latest = max([reply.pk, *reply.versions])
        return AssistantRequest.objects.create(
            room=locked,
            assistant=reply.assistant,
            message=reply.in_reply_to,
            requester=user,
            kind=AssistantRequest.Kind.REGENERATE,
            regenerates_id=latest,
            heartbeat=timezone.now(),
        )


def request_catchup(*, room: Room, user: object, assistant_name: str | None, since_seq: int) -> AssistantRequest:
    """A private summary of what ``user`` has not read (from ``since_seq``)."""
    assistants = list(room.assistants.filter(enabled=True))
    if assistant_name:
        assistants = [a for a in assistants if a.name.lower() == assistant_name.lower()]
    if not assistants:
        raise ServiceError(events.NOT_FOUND, "this room has no such assistant")
    return AssistantRequest.objects.create(
        room=room,
        assistant=assistants[0],
        requester=user,
        kind=AssistantRequest.Kind.CATCHUP,
        since_seq=since_seq,
        heartbeat=timezone.now(),
    )
